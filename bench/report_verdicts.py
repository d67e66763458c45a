"""The report's verdict on good pairs and on broken ones: its false-alarm rate, and what it catches.

Good pairs: every fetched template (tests/.data: Colin27, MNI152 2009a, FSL's MNI152, SPM's
avg152T1 and avg152T2) registered onto every other one with `ilex register -m optimize --qc`
(defaults: 1 mm grids capped at 256^3, LNCC within T1, MI across contrasts). Broken pairs, Colin27
onto MNI152 2009a with the moving image spoiled: its header's front-back axis negated, its
left-right and front-back header axes swapped, its data mirrored front-back in place, its origin
moved 300 mm, an initial transform of 40° and 25 mm (-i), and pure noise on its grid. Each pair's
qc.json figures the rules read and its verdict go into the JSON result, with the false-alarm
rate (good pairs with any rule failed) and the broken pairs caught.

    python bench/report_verdicts.py --json bench/results/report_verdicts.json
    python bench/report_verdicts.py --held-out --json bench/results/report_verdicts_held_out.json

`--held-out` runs pairs chosen after the rules were set and never used to set them: bench/cases.py's seven cases
(the optimiser benchmark's pairs, known warps included) as good pairs, and avg152T1 onto FSL's MNI152 spoiled the
six ways above as broken ones.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = (
    "colin27_t1.nii.gz",
    "mni2009a_t1.nii.gz",
    "fsl_mni152_t1_2mm.nii.gz",
    "spm_avg152t1.nii",
    "spm_avg152t2.nii",
)
FIGURES = (
    "similarity_nmi_before",
    "similarity_nmi_after",
    "head_overlap_before",
    "head_overlap_after",
    "head_size_mm",
    "head_folding_fraction",
    "head_log_jacobian_std",
)


def spoil(kind: str, source: str, out: str) -> str:
    """`source` spoiled as `kind` says, written to `out`."""
    import nibabel as nib
    import numpy as np

    img = nib.load(source)
    data = np.asarray(img.dataobj, np.float32)
    affine = img.affine.copy()
    if kind == "negated_axis":  # the front-back column of the header negated: mirrored and moved
        affine[:, 1] *= -1
    elif kind == "swapped_axes":  # the first two header columns swapped
        affine[:, [0, 1]] = affine[:, [1, 0]]
    elif kind == "mirrored_in_place":  # the data mirrored front-back, the head where it was
        data = data[:, ::-1]
    elif kind == "apart":
        affine[1, 3] += 300.0
    elif kind == "noise":
        data = np.random.default_rng(0).uniform(0, 100, data.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), out)
    return out


def wrong_init(path: str) -> str:
    import numpy as np

    from ilex.image.matrix_io import itk_text

    angle = np.radians(40)
    matrix = np.eye(4)
    matrix[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    matrix[2, 3] = 25.0
    with open(path, "w") as f:
        f.write(itk_text(matrix))
    return path


def run(moving: str, fixed: str, qc: str, extra=()) -> dict:
    from ilex.cli.main import main as ilex_main

    start = time.perf_counter()
    code = ilex_main(["register", "-m", "optimize", moving, fixed, "--qc", qc, "-q", *extra])
    seconds = time.perf_counter() - start
    if code != 0:
        return {"exit_status": code, "seconds": seconds}
    with open(os.path.join(qc, "qc.json"), encoding="utf-8") as f:
        record = json.load(f)
    return {
        "seconds": round(seconds, 2),
        **{k: record.get(k) for k in FIGURES},
        "affine": record.get("affine"),
        "failed": record["verdict"]["failed"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="write the figures here")
    parser.add_argument("--no-broken", action="store_true", help="the good pairs only")
    parser.add_argument(
        "--held-out",
        action="store_true",
        help="instead: the pairs the rules were not set on (bench/cases.py's seven cases as good pairs; "
        "avg152T1 onto FSL's MNI152 spoiled the same six ways as broken ones)",
    )
    args = parser.parse_args()
    import provenance

    prov = provenance.collect()
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from data import data_path

    report = {"good": {}, "broken": {}, "provenance": prov}

    def write():
        good = report["good"].values()
        flagged = [name for name, r in report["good"].items() if r.get("failed")]
        report["false_alarms"] = {"pairs": len(good), "flagged": flagged, "rate": len(flagged) / max(len(good), 1)}
        report["caught"] = {name: bool(r.get("failed")) for name, r in report["broken"].items()}
        report["provenance"] = provenance.finish(prov)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
            f.write("\n")

    with tempfile.TemporaryDirectory() as tmp:
        if args.held_out:
            report["held_out"] = True
            from cases import CASES, prepare

            specs = {
                case: prepare(case, os.path.dirname(data_path("colin27_t1.nii.gz")), tmp, 8.0, 0) for case in CASES
            }
            good = [(case, spec["moving"], spec["fixed"]) for case, spec in specs.items()]
            source, target = data_path("spm_avg152t1.nii"), data_path("fsl_mni152_t1_2mm.nii.gz")
        else:
            good = [
                (f"{moving.split('.')[0]}->{fixed.split('.')[0]}", data_path(moving), data_path(fixed))
                for moving, fixed in itertools.permutations(TEMPLATES, 2)
            ]
            source, target = data_path("colin27_t1.nii.gz"), data_path("mni2009a_t1.nii.gz")
        for name, moving, fixed in good:
            report["good"][name] = run(moving, fixed, os.path.join(tmp, name))
            print(name, report["good"][name], flush=True)
            write()
        if args.held_out or not args.no_broken:
            cases = {
                kind: (spoil(kind, source, os.path.join(tmp, f"{kind}.nii.gz")), ())
                for kind in ("negated_axis", "swapped_axes", "mirrored_in_place", "apart", "noise")
            }
            cases["wrong_init_40deg_25mm"] = (source, ("-i", wrong_init(os.path.join(tmp, "wrong.txt"))))
            for name, (moving, extra) in cases.items():
                report["broken"][name] = run(moving, target, os.path.join(tmp, name), extra)
                print(name, report["broken"][name], flush=True)
                write()
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
