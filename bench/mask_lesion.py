"""A lesion left out by a cost-function mask: `-m optimize` beside ANTs SyN (issue 34's mask goal).

MNI152 2009a at its own 1 mm (fixed) seen through a known map (moving): a 4 degree turn about
the image's centre, a shift of (4, -3, 2) mm and a smooth warp of up to 3 mm; in the moving image
a ball of 12 mm radius in cortex and white matter is zeroed (a resection-like hole). Each tool
registers the moving image onto the fixed one three times: without the lesion, with it and no
mask, and with it and a fixed-image mask that leaves out the ball and a 4 mm margin (ilex:
`mask_fixed=`; ANTs: `ants.registration(..., mask=, mask_all_stages=True)`, so that its affine
stages are masked too, as ilex's are). The moving GM/WM labels (the templates' probability maps
above one half) are carried onto the fixed grid, nearest neighbour, and scored by mean GM/WM Dice
outside the lesion and its margin, and within 16 mm of it. The goal: with the mask, Dice
outside no worse than without the lesion by more than 0.005.

One process, runs in turn, in-process clocks (registration and label transfer; ilex's first run
compiles); ANTs with its defaults otherwise (`type_of_transform="SyN"`), 2 threads.

    python bench/mask_lesion.py --json bench/results/mask_lesion_2026-12-05.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
import provenance  # bench/ is on sys.path when run as python bench/NAME.py

RADIUS_MM, MARGIN_MM, NEAR_MM = 12.0, 4, 16


def make_case(work: str) -> dict:
    """Write the pair, its labels and the mask into `work`; return the paths and score regions."""
    import nibabel as nib
    from data import data_path
    from scipy.ndimage import binary_dilation, map_coordinates

    t1 = nib.load(data_path("mni2009a_t1.nii.gz"))
    affine, fixed = t1.affine, np.asarray(t1.dataobj, np.float32)
    gm, wm = (np.asarray(nib.load(data_path(f"mni2009a_{t}.nii.gz")).dataobj) for t in ("gm", "wm"))
    labels = np.zeros(fixed.shape, np.int16)
    labels[gm > 127] = 1
    labels[wm > 127] = 2
    shape = fixed.shape
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), 0)
    column = lambda x: np.asarray(x, np.float32)[:, None, None, None]
    centre = (np.array(shape) - 1) / 2
    a = np.deg2rad(4.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    warp = np.stack([3.0 * np.sin(grid[(d + 1) % 3] / 12.0 + d) for d in range(3)], 0)  # 1 mm voxels
    phi = np.einsum("ij,j...->i...", rot, grid - column(centre)) + column(centre) + column([4, -3, 2]) + warp
    ball = np.linalg.norm(grid - column(np.array([0.35, 0.55, 0.6]) * np.array(shape)), axis=0) < RADIUS_MM
    outside = ~binary_dilation(ball, iterations=MARGIN_MM)
    near = binary_dilation(ball, iterations=NEAR_MM) & outside
    paths = {k: os.path.join(work, f"{k}.nii.gz") for k in ("fixed", "clean", "lesioned", "moving_labels", "mask")}
    save = lambda name, data: nib.save(nib.Nifti1Image(data, affine), paths[name])
    save("fixed", fixed)
    save("clean", map_coordinates(fixed, phi, order=1).astype(np.float32))
    save("lesioned", map_coordinates(fixed * ~ball, phi, order=1).astype(np.float32))
    save("moving_labels", map_coordinates(labels, phi, order=0).astype(np.int16))
    save("mask", outside.astype(np.uint8))
    return {
        "paths": paths,
        "labels": labels,
        "outside": outside,
        "near": near,
        "ball_in_brain": float((labels[ball] > 0).mean()),
    }


def dice(moved: np.ndarray, labels: np.ndarray, where: np.ndarray) -> float:
    scores = []
    for k in (1, 2):
        a, b = (moved == k) & where, (labels == k) & where
        scores.append(2 * (a & b).sum() / (a.sum() + b.sum()))
    return float(np.mean(scores))


def run_ilex(paths: dict, moving: str, masked: bool) -> tuple[np.ndarray, float, float]:
    import jax.numpy as jnp
    import nibabel as nib

    from ilex.registration.pipeline import register, resample
    from ilex.transforms.jacobian import folding_fraction, jacobian_determinant

    start = time.perf_counter()
    result = register(paths[moving], paths["fixed"], method="optimize", mask_fixed=paths["mask"] if masked else None)
    labels = jnp.asarray(np.asarray(nib.load(paths["moving_labels"]).dataobj, np.float32))
    moved = np.asarray(resample(labels, jnp.asarray(result.forward_vox), "nearest", jnp.float32(0)))
    seconds = time.perf_counter() - start
    folding = float(folding_fraction(jacobian_determinant(result.forward, result.fixed.affine)))
    return moved, seconds, folding


def run_ants(paths: dict, moving: str, masked: bool) -> tuple[np.ndarray, float, float]:
    import ants

    start = time.perf_counter()
    fixed = ants.image_read(paths["fixed"])
    options = {"mask": ants.image_read(paths["mask"]), "mask_all_stages": True} if masked else {}
    reg = ants.registration(fixed, ants.image_read(paths[moving]), type_of_transform="SyN", **options)
    labels = ants.image_read(paths["moving_labels"])
    moved = ants.apply_transforms(fixed, labels, reg["fwdtransforms"], interpolator="nearestNeighbor").numpy()
    seconds = time.perf_counter() - start
    jac = ants.create_jacobian_determinant_image(fixed, reg["fwdtransforms"][0]).numpy()
    return np.round(moved).astype(np.int16), seconds, float((jac <= 0).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, help="result file (a markdown table is written beside it, .md)")
    parser.add_argument("--tools", nargs="+", default=["ilex", "SyN"], choices=["ilex", "SyN"])
    args = parser.parse_args()
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")
    prov = provenance.collect()
    report = {"provenance": prov, "runs": []}
    with tempfile.TemporaryDirectory() as work:
        case = make_case(work)
        report["ball_in_brain"] = case["ball_in_brain"]
        runners = {"ilex": run_ilex, "SyN": run_ants}
        for tool in args.tools:
            for label, moving, masked in (
                ("no lesion", "clean", False),
                ("lesion, no mask", "lesioned", False),
                ("lesion, fixed mask", "lesioned", True),
            ):
                moved, seconds, folding = runners[tool](case["paths"], moving, masked)
                row = {
                    "tool": tool,
                    "run": label,
                    "dice_outside": dice(moved, case["labels"], case["outside"]),
                    "dice_near": dice(moved, case["labels"], case["near"]),
                    "folding_fraction": folding,
                    "seconds": seconds,
                    "load_average": os.getloadavg(),
                }
                report["runs"].append(row)
                print(json.dumps(row), flush=True)
                report["provenance"] = provenance.finish(prov)
                _write(args.json, report)


def _write(path: str, report: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    lines = [
        "| tool | run | Dice outside lesion + 4 mm | Dice within 16 mm | outside − no lesion | fold % | s | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    clean = {r["tool"]: r["dice_outside"] for r in report["runs"] if r["run"] == "no lesion"}
    for r in report["runs"]:
        delta = r["dice_outside"] - clean.get(r["tool"], np.nan)
        lines.append(
            f"| {r['tool']} | {r['run']} | {r['dice_outside']:.4f} | {r['dice_near']:.4f} | {delta:+.4f} | "
            f"{100 * r['folding_fraction']:.3f} | {r['seconds']:.1f} | {r['load_average'][0]:.1f} |"
        )
    header = provenance.markdown(report["provenance"])
    with open(os.path.splitext(path)[0] + ".md", "w", encoding="utf-8") as f:
        f.write(
            f"# A lesion left out by a cost-function mask (bench/mask_lesion.py)\n\n{header}\n"
            + "\n".join(lines)
            + "\n"
        )


if __name__ == "__main__":
    main()
