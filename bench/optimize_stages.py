"""Why `-m optimize` trails ANTs SyN, stage by stage (issue 34): a diagnosis, nothing tuned.

Part `known` (a human known-transform case, same contrast): MNI152 2009a (T1, skull-stripped; at
`--voxel` mm, its own 1 mm by default) is the moving image; the fixed image is it seen through a
known affine (6 degrees about x, scales 1.05/0.97/1.03, shift (6, -4, 3) mm, as bench/cases.py's
`mni_affine_contrast`) and a smooth diffeomorphic warp of at most `--amplitude` mm (5 by default),
contrast unchanged. Grey/white labels go the same way. Each variant is `register(...)` with an
`OptimizeMethod` (or a subclass that starts the deformable stage from the true affine), scored
as bench/cases.py scores every tool (GM/WM Dice, warp error, folding), plus the affine part's
error in mm against the known affine, mean and max over the head. The variants: the affine stage
alone; the default; the first level alone; both from the true affine; more iterations with the
stopping rule off; a 1 mm level; a 2-voxel velocity grid; a smaller update smoothing (λ). And,
with `--syn`, ANTs SyN (bench/peers.py's runner, its `SyN` preset) on the same pair.

Part `half`: bench/cases.py's `half_mm` (Colin27 at 0.5 mm over a 96 mm cube, a known warp of at
most `--half-amplitude` mm; AAL Dice): the default levels (2 and 1 mm on that grid) against a
level at the grid's own 0.5 mm and a velocity grid of 2 voxels.

Part `skull`: Colin27 (a whole head) and MNI152 2009a (a skull-stripped brain) onto each other at
`--skull-mm` (1, 2 and 4 mm; both resampled, linear, as bench/report_verdicts.py --coarse does),
each with the affine stage alone and the full method, and the full method with a cost-function
mask on the skull-stripped image's support (its head, dilated about 4 mm), with LNCC's window at
3 voxels rather than 5, and with only the finest level (the grid's voxel, 50 iterations): the affine part's
scales (singular values, moving RAS -> fixed RAS) and the moved head's volume (the moving image's
voxels above 10 % of its 99th percentile, carried onto the fixed grid), against both heads'.

Part `turn`: a tuning case of bench/cases.py's issue-34 set with a large turn (`--turn-case`,
`mni_rotate` by default: MNI152 2009a turned 22.3 degrees and warped; a held-out case is refused):
the affine stage alone and the full method, each with and without the affine stage's search over
turns (`ilex.optimize.affine.search_rotation`), and the deformable stage from the true affine;
the affine part's error in mm against the known affine, Dice, the warp's error, and what the
search chose.

The experiments that the method's options cannot express (the stopping rule, LNCC's window) patch
`optimise_velocity`'s `tolerance` or `radius`, or `optimise_affine`'s `search`, in this process
only; ilex itself is unchanged.

    nice python bench/optimize_stages.py --syn --json bench/results/optimize_stages_DATE.json

The JSON holds every figure and the run's provenance (bench/provenance.py), written after each run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import provenance
from cases import _grid, _head, _sample, _tissue_labels, load, save, score, smooth_warp

# (name, OptimizeMethod options, start from the true affine, tolerance patch or None)
KNOWN_VARIANTS = (
    ("affine stage alone", None, False, None),
    ("default", {}, False, None),
    ("first level alone (4 voxels)", {"levels": (4, 2), "iterations": (50, 0)}, False, None),
    ("true affine, default", {}, True, None),
    ("true affine, first level alone", {"levels": (4, 2), "iterations": (50, 0)}, True, None),
    ("iterations 50/20, no early stop", {}, False, 0.0),
    ("iterations 100/40, no early stop", {"iterations": (100, 40)}, False, 0.0),
    (
        "levels 4/2/1 voxels (a grid-voxel level), 50/20/20",
        {"levels": (4, 2, 1), "iterations": (50, 20, 20)},
        False,
        None,
    ),
    (
        "velocity grid 2 voxels, levels 2/1, 50/20",
        {"levels": (2, 1), "iterations": (50, 20), "velocity_scale": 2},
        False,
        None,
    ),
    ("λ 0.18 (update σ 1.73 voxels, SyN's)", {"hyper": 0.18}, False, None),
    (
        "velocity grid 2 voxels, level 2 alone (50)",
        {"levels": (2, 1), "iterations": (50, 0), "velocity_scale": 2},
        False,
        None,
    ),
    (
        "velocity grid 2 voxels, levels 2/1, 50/40, no early stop",
        {"levels": (2, 1), "iterations": (50, 40), "velocity_scale": 2},
        False,
        0.0,
    ),
    (
        "true affine, velocity grid 2 voxels, levels 2/1",
        {"levels": (2, 1), "iterations": (50, 20), "velocity_scale": 2},
        True,
        None,
    ),
    (
        "λ 0.75, velocity grid 2 voxels, levels 2/1",
        {"hyper": 0.75, "levels": (2, 1), "iterations": (50, 20), "velocity_scale": 2},
        False,
        None,
    ),
    (
        "λ 0.18, velocity grid 2 voxels, levels 2/1",
        {"hyper": 0.18, "levels": (2, 1), "iterations": (50, 20), "velocity_scale": 2},
        False,
        None,
    ),
)


def _method_classes():
    from ilex.registration.methods import OptimizeMethod
    from ilex.registration.methods.optimize import OptimizeAffineMethod

    @dataclass(eq=False)
    class FromMatrix(OptimizeMethod):
        """`OptimizeMethod` whose deformable stage starts from `start` (fixed-network voxel ->
        moving-network voxel) instead of the affine stage's answer."""

        start: np.ndarray | None = None
        __hash__ = OptimizeMethod.__hash__

        def _affine_stage(self, mov_net, fix_net, size, scales, profile, masks=None):
            pyr_mov, pyr_fix, _, pyr_masks = OptimizeMethod(affine=False)._affine_stage(
                mov_net, fix_net, size, scales, profile, masks
            )
            return pyr_mov, pyr_fix, np.asarray(self.start, np.float64), pyr_masks

    return OptimizeMethod, OptimizeAffineMethod, FromMatrix


@contextlib.contextmanager
def without_turn_search(off: bool = True):
    """`optimise_affine` without its search over turns (the affine stage before issue 34's fix), in
    this process only; `off=False`: unchanged."""
    import ilex.registration.methods.optimize as opt

    original = opt.optimise_affine
    if off:
        opt.optimise_affine = functools.partial(original, search=False)
    try:
        yield
    finally:
        opt.optimise_affine = original


@contextlib.contextmanager
def patched(**kwargs):
    """`optimise_velocity` with `kwargs` (`tolerance`, `radius`) fixed in this process only; none
    given: unchanged."""
    import ilex.registration.methods.optimize as opt

    original = opt.optimise_velocity
    if kwargs:
        opt.optimise_velocity = functools.partial(original, **kwargs)
    try:
        yield
    finally:
        opt.optimise_velocity = original


def resampled(source: str, voxel_mm: float, out: str, order: int = 1) -> str:
    import nibabel as nib
    from nibabel.processing import resample_to_output

    nib.save(resample_to_output(nib.load(source), voxel_sizes=(voxel_mm,) * 3, order=order), out)
    return out


def true_world(lin, centre, shift):
    """World fixed -> moving (4x4) of the known affine: y = lin (x - centre) + centre + shift."""
    m = np.eye(4)
    m[:3, :3] = lin
    m[:3, 3] = centre - lin @ centre + shift
    return m


def prepare_known(data: str, work: str, voxel: float, amplitude: float, seed: int) -> dict:
    t1_path = os.path.join(data, "mni2009a_t1.nii.gz")
    if voxel != 1.0:
        t1_path = resampled(t1_path, voxel, os.path.join(work, "t1.nii.gz"))
    _tissue_labels("mni2009a_gm.nii.gz", "mni2009a_wm.nii.gz", os.path.join(work, "labels_1mm.nii.gz"), data)
    labels_path = os.path.join(work, "labels_1mm.nii.gz")
    if voxel != 1.0:
        labels_path = resampled(labels_path, voxel, os.path.join(work, "labels.nii.gz"), order=0)
    t1, affine = load(t1_path)
    labels, _ = load(labels_path)
    a = np.deg2rad(6.0)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    lin = rot @ np.diag([1.05, 0.97, 1.03])
    centre = affine[:3, :3] @ ((np.array(t1.shape) - 1) / 2) + affine[:3, 3]
    shift = np.array([6.0, -4.0, 3.0])
    u_vox = smooth_warp(t1.shape, amplitude / voxel, seed + 2, sigma=8.0 / voxel)
    x = np.einsum("ij,j...->...i", affine[:3, :3], _grid(t1.shape)) + affine[:3, 3]
    y = (x + u_vox @ affine[:3, :3].T - centre) @ lin.T + centre + shift
    coords = np.moveaxis((y - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T, -1, 0).astype(np.float32)
    fixed = _sample(t1, coords, 1)
    w = lambda name: os.path.join(work, name)
    save(w("fixed.nii.gz"), fixed.astype(np.float32), affine)
    save(w("fixed_labels.nii.gz"), _sample(labels, coords, 0).astype(np.int16), affine)
    np.save(w("truth.npy"), (y - x).astype(np.float32))
    head = _head(fixed)
    np.save(w("head.npy"), head)
    world = true_world(lin, centre, shift)
    return {
        "case": "known",
        "moving": t1_path,
        "fixed": w("fixed.nii.gz"),
        "moving_labels": labels_path,
        "fixed_labels": w("fixed_labels.nii.gz"),
        "labels": "tissue",
        "true_warp": w("truth.npy"),
        "head_mask": w("head.npy"),
        "true_world": world,
        "true_vox": np.linalg.inv(affine) @ world @ affine,  # fixed voxel -> moving voxel (one grid)
        "fixed_affine": affine,
        "warp_max_mm": float(np.abs(u_vox * voxel).max()),
    }


def affine_error_mm(result, spec) -> dict:
    """The affine part's error against the known affine: |A_est x - A_true x| over the head (mm)."""
    fa = spec["fixed_affine"]
    est = result.moving.affine @ result.matrix_vox @ np.linalg.inv(fa)  # world fixed -> moving
    head = np.load(spec["head_mask"])
    idx = np.argwhere(head)[::7].astype(np.float64)
    x = idx @ fa[:3, :3].T + fa[:3, 3]
    diff = x @ (est - spec["true_world"])[:3, :3].T + (est - spec["true_world"])[:3, 3]
    err = np.linalg.norm(diff, axis=1)
    return {"affine_error_mean_mm": float(err.mean()), "affine_error_max_mm": float(err.max())}


def write_outputs(result, spec, out):
    import jax.numpy as jnp

    from ilex.registration.pipeline import resample

    labels, _ = load(spec["moving_labels"])
    warped = np.asarray(resample(jnp.asarray(labels), jnp.asarray(result.forward_vox), "nearest", jnp.float32(0)))
    np.save(out + "_labels.npy", warped.astype(np.int16))
    np.save(out + "_warp.npy", np.asarray(result.forward, np.float32))


def known_case_images(spec):
    """The known-affine case's images and its true affine in network coordinates (`FromMatrix`'s start)."""
    from ilex.image.io import load_image
    from ilex.registration.network_space import network_space
    from ilex.registration.working_grid import image_grid

    moving, fixed = load_image(spec["moving"]), load_image(spec["fixed"])
    grid = image_grid(moving, fixed, 256)
    space = network_space(moving, fixed, 256, centre_on_fixed=False, grid=grid)
    return moving, fixed, space.mov_to_net @ spec["true_vox"] @ space.net_to_fix


def scored_run(moving, fixed, method, spec, out, context=None, known_affine=True):
    """Register (inside `context`, a patch of the method), write the outputs, score them: one table row
    (seconds, Dice and warp error, the affine error where the case knows its affine) and the result."""
    from ilex.registration.pipeline import register

    t0 = time.perf_counter()
    with context or contextlib.nullcontext():
        result = register(moving, fixed, method=method, extent=256)
    seconds = time.perf_counter() - t0
    write_outputs(result, spec, out)
    row = {"seconds": seconds, "load_average_1min": os.getloadavg()[0]}
    row |= {k: v for k, v in score(spec, out).items() if k != "warp_label_agreement"}
    if known_affine:
        row |= affine_error_mm(result, spec)
    row["profile"] = result.transform.details.get("profile")
    return row, result


def run_known(spec, work, report, save_report, syn: bool) -> None:
    OptimizeMethod, OptimizeAffineMethod, FromMatrix = _method_classes()
    moving, fixed, true_net = known_case_images(spec)
    rows = report["known"]["runs"]
    for name, options, from_truth, tol in KNOWN_VARIANTS:
        if options is None:
            method = OptimizeAffineMethod()
        elif from_truth:
            method = FromMatrix(start=true_net, **options)
        else:
            method = OptimizeMethod(**options)
        context = patched(**({} if tol is None else {"tolerance": tol}))
        row, result = scored_run(moving, fixed, method, spec, os.path.join(work, "run"), context)
        details = result.transform.details
        for key in ("similarity", "levels", "iterations", "voxel_size"):
            if key in details:
                row[key] = details[key]
        row["options"] = options
        row["from_true_affine"] = from_truth
        row["tolerance"] = tol
        rows[name] = row
        print(
            name,
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "profile"},
            flush=True,
        )
        save_report()
    if syn:
        from peers import run_ants

        out = os.path.join(work, "syn")
        t = run_ants(spec, out)
        row = t | {k: v for k, v in score(spec, out).items() if k != "warp_label_agreement"}
        row["load_average_1min"] = os.getloadavg()[0]
        rows["ANTs SyN (antspyx preset)"] = row
        print("SyN", row, flush=True)
        save_report()


HALF_VARIANTS = (
    ("default", {}),
    ("levels 4/2/1 voxels (adds the 0.5 mm grid), 50/20/20", {"levels": (4, 2, 1), "iterations": (50, 20, 20)}),
    (
        "velocity grid 2 voxels, levels 2/1 (1 and 0.5 mm), 50/20",
        {"levels": (2, 1), "iterations": (50, 20), "velocity_scale": 2},
    ),
)


def run_half(data, work, amplitude, seed, report, save_report) -> None:
    """bench/cases.py's `half_mm` (0.5 mm voxels, a known warp): the default levels (2 and 1 mm)
    against a level at the grid's own 0.5 mm and a finer velocity grid."""
    from cases import prepare

    OptimizeMethod, _, _ = _method_classes()
    spec = prepare("half_mm", data, work, amplitude, seed)
    rows = report["half_mm"]["runs"]
    for name, options in HALF_VARIANTS:
        method = OptimizeMethod(**options)
        out = os.path.join(work, "half")
        row, result = scored_run(spec["moving"], spec["fixed"], method, spec, out, known_affine=False)
        details = result.transform.details
        row |= {k: details[k] for k in ("similarity", "levels", "iterations", "voxel_size")}
        row["options"] = options
        rows[name] = row
        print("half_mm", name, {k: v for k, v in row.items() if k != "profile"}, flush=True)
        save_report()


def prepare_turn(case: str, data: str, work: str, amplitude: float, seed: int) -> dict:
    """bench/cases.py's `case` (a tuning case of its WIDER set) with its known affine for
    `affine_error_mm`."""
    from cases import HELD_OUT, WIDER, prepare, rotation

    if case in HELD_OUT or case not in WIDER:
        raise SystemExit(f"--turn-case {case}: choose a tuning case of bench/cases.py's WIDER set, not a held-out one")
    spec = prepare(case, data, work, amplitude, seed)
    _, degrees, scales, shift, *_ = WIDER[case]
    moving, affine = load(spec["moving"])
    centre = affine[:3, :3] @ ((np.array(moving.shape) - 1) / 2) + affine[:3, 3]
    world = true_world(rotation(degrees) @ np.diag(scales), centre, np.asarray(shift, np.float64))
    return spec | {"true_world": world, "fixed_affine": affine, "true_vox": np.linalg.inv(affine) @ world @ affine}


def run_turn(spec, work, report, save_report) -> None:
    OptimizeMethod, OptimizeAffineMethod, FromMatrix = _method_classes()
    moving, fixed, true_net = known_case_images(spec)
    rows = report["turn"]["runs"]
    for name, method, no_search in (
        ("affine stage alone, no turn search (before the fix)", OptimizeAffineMethod(), True),
        ("affine stage alone", OptimizeAffineMethod(), False),
        ("default, no turn search (before the fix)", OptimizeMethod(), True),
        ("default", OptimizeMethod(), False),
        ("true affine, default", FromMatrix(start=true_net), False),
    ):
        out = os.path.join(work, "turn")
        row, _ = scored_run(moving, fixed, method, spec, out, without_turn_search(no_search))
        rows[name] = row
        print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        save_report()


def head_mask(data: np.ndarray) -> np.ndarray:
    return data > 0.1 * np.percentile(data, 99)


def run_skull(data: str, work: str, sizes, report, save_report) -> None:
    import jax.numpy as jnp
    from scipy.ndimage import binary_dilation

    from ilex.registration.pipeline import register, resample

    OptimizeMethod, OptimizeAffineMethod, _ = _method_classes()
    rows = report["skull"]["runs"]
    for mm in sizes:
        paths = {
            name: resampled(os.path.join(data, f"{name}.nii.gz"), mm, os.path.join(work, f"{name}_{mm:g}.nii.gz"))
            for name in ("colin27_t1", "mni2009a_t1")
        }
        brain, brain_affine = load(paths["mni2009a_t1"])
        mask = binary_dilation(head_mask(brain), iterations=max(1, round(4 / mm)))
        mask_path = os.path.join(work, f"brain_mask_{mm:g}.nii.gz")
        save(mask_path, mask.astype(np.uint8), brain_affine)
        for moving, fixed in (("colin27_t1", "mni2009a_t1"), ("mni2009a_t1", "colin27_t1")):
            mov, mov_affine = load(paths[moving])
            fix, fix_affine = load(paths[fixed])
            mov_head = head_mask(mov).astype(np.float32)
            cm3 = lambda n, a: float(n * abs(np.linalg.det(a[:3, :3])) / 1000)
            finest = {"levels": (1,), "iterations": (50,), "velocity_scale": 1}
            masked = {"mask_fixed": mask_path} if fixed == "mni2009a_t1" else {"mask_moving": mask_path}
            for variant, method, kwargs, patch in (
                ("affine stage alone", OptimizeAffineMethod(), {}, {}),
                ("full", OptimizeMethod(), {}, {}),
                ("full, brain mask on the skull-stripped image", OptimizeMethod(), masked, {}),
                ("full, LNCC radius 1 (3-voxel windows)", OptimizeMethod(), {}, {"radius": 1}),
                ("full, finest level alone (1 voxel, 1-voxel velocity grid)", OptimizeMethod(**finest), {}, {}),
            ):
                t0 = time.perf_counter()
                with patched(**patch):
                    result = register(paths[moving], paths[fixed], method=method, extent=256, **kwargs)
                seconds = time.perf_counter() - t0
                moved_head = np.asarray(
                    resample(jnp.asarray(mov_head), jnp.asarray(result.forward_vox), "nearest", jnp.float32(0))
                )
                details = result.transform.details
                row = {
                    "seconds": seconds,
                    "load_average_1min": os.getloadavg()[0],
                    "grid_voxel_mm": details.get("voxel_size"),
                    "affine_scales": [float(s) for s in np.linalg.svd(result.affine[:3, :3], compute_uv=False)],
                    "moved_head_cm3": cm3(moved_head.sum(), fix_affine),
                    "moving_head_cm3": cm3(mov_head.sum(), mov_affine),
                    "fixed_head_cm3": cm3(head_mask(fix).sum(), fix_affine),
                    "similarity": details.get("similarity"),
                    "profile": details.get("profile"),
                }
                name = f"{moving} -> {fixed} @ {mm:g} mm: {variant}"
                rows[name] = row
                print(name, {k: v for k, v in row.items() if k != "profile"}, flush=True)
                save_report()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "tests", ".data"))
    ap.add_argument(
        "--parts", nargs="+", default=["known", "half", "skull"], choices=["known", "half", "skull", "turn"]
    )
    ap.add_argument("--turn-case", default="mni_rotate", help="part turn's case (a tuning case of bench/cases.py)")
    ap.add_argument("--turn-amplitude", type=float, default=8.0, help="part turn's --amplitude (optimize_vs_ants.py's)")
    ap.add_argument("--half-amplitude", type=float, default=8.0, help="largest displacement of half_mm's warp, mm")
    ap.add_argument("--voxel", type=float, default=1.0, help="voxel size (mm) of the known case's images")
    ap.add_argument("--amplitude", type=float, default=5.0, help="largest displacement of the known warp, mm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skull-mm", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    ap.add_argument("--syn", action="store_true", help="also run ANTs SyN (antspyx preset) on the known case")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    prov = provenance.collect()
    report = {"provenance": prov, "settings": {k: v for k, v in vars(args).items() if k != "json"}}

    def save_report():
        provenance.finish(report["provenance"])
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
            f.write("\n")

    with tempfile.TemporaryDirectory() as work:
        if "known" in args.parts:
            spec = prepare_known(args.data, work, args.voxel, args.amplitude, args.seed)
            report["known"] = {
                "voxel_mm": args.voxel,
                "warp_max_mm": spec["warp_max_mm"],
                "true_world_fixed_to_moving": spec["true_world"],
                "runs": {},
            }
            run_known(spec, work, report, save_report, args.syn)
        if "half" in args.parts:
            report["half_mm"] = {"runs": {}}
            run_half(args.data, work, args.half_amplitude, args.seed, report, save_report)
        if "skull" in args.parts:
            report["skull"] = {"runs": {}}
            run_skull(args.data, work, args.skull_mm, report, save_report)
        if "turn" in args.parts:
            spec = prepare_turn(args.turn_case, args.data, work, args.turn_amplitude, args.seed)
            report["turn"] = {"case": args.turn_case, "true_world_fixed_to_moving": spec["true_world"], "runs": {}}
            run_turn(spec, work, report, save_report)
    save_report()


if __name__ == "__main__":
    main()
