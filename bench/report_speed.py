"""Time and size of the pair report (`--qc DIR/report.html`) for a 256^3 pair.

Issue 18 asks for the report of a 256^3 pair in at most 2 s on this machine, and at most 3 MB.
The pair: Colin27 and MNI152 2009a (fetched by `python -m tests.data --fetch`), each resampled
once onto a 256^3 1 mm grid around its own centre; registered by the random-weight e32 test
fixture with `-m deform -e 256` (the report's cost does not depend on the weights; this is not a
registration to look at). Then, `--repeats` times each, on the same result:

* `metrics`: similarity before/after, the Jacobian in the head, the affine's parts (`pair_metrics`)
* `slices`:  the three rows of slices cut inside the head (`cut_slices`)
* `render`:  the three matplotlib layers, PNG encoding and the page (`html_report.render`)
* `write`:   report.npz and report.html onto disk

`report` is their sum (what --qc adds for the page), against the 2 s. `--study N` times, once,
the study page of N pairs that all point at this pair's QC directory (N thumbnails drawn). The Jacobian itself
(`quality_report`) and the older QC files (jacobian.nii.gz, checkerboard.png) are timed too but
were there before. matplotlib's import, paid once per process, is timed in a fresh process.

    nice python bench/report_speed.py --json bench/results/report_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def conform_256(source: str, target: str) -> None:
    """`source` resampled (linear) onto a 256^3 1 mm RAS grid centred where its own grid is."""
    import nibabel as nib
    import numpy as np
    from scipy.ndimage import affine_transform

    img = nib.load(source)
    data = np.asarray(img.dataobj, np.float32)
    centre = img.affine @ np.r_[(np.array(data.shape) - 1) / 2, 1]
    affine = np.eye(4)
    affine[:3, 3] = centre[:3] - 127.5
    vox = np.linalg.inv(img.affine) @ affine
    out = affine_transform(data, vox[:3, :3], vox[:3, 3], output_shape=(256, 256, 256), order=1)
    nib.save(nib.Nifti1Image(out, affine), target)


CPU: dict[int, list[float]] = {}  # id(times list) -> this process's CPU seconds of each call


def timed(fn, repeats: int):
    """(median wall seconds, every call's wall seconds, the last value); each call's CPU time
    (this process, all threads) goes to CPU, keyed by the list: on a shared machine the wall
    time grows with the load, the CPU time much less."""
    times, cpu, value = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        value = fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    CPU[id(times)] = cpu
    return statistics.median(times), times, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument(
        "--study",
        type=int,
        default=500,
        metavar="N",
        help="also time the study page of N pairs (each pointing at this pair's QC directory)",
    )
    args = parser.parse_args()
    import provenance

    prov = provenance.collect()
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from data import data_path

    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import matplotlib.figure, matplotlib.backends.backend_agg"], check=True)
    import_seconds = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    import_seconds -= time.perf_counter() - start  # the interpreter's own start

    import numpy as np

    import ilex
    from ilex.qc import quality_report
    from ilex.qc.checkerboard import checkerboard_png
    from ilex.qc.html_report import render, write_pair_report
    from ilex.qc.metrics import pair_metrics
    from ilex.qc.slices import cut_slices
    from ilex.registration.pipeline import register

    with tempfile.TemporaryDirectory() as tmp:
        moving, fixed = os.path.join(tmp, "colin256.nii.gz"), os.path.join(tmp, "mni256.nii.gz")
        conform_256(data_path("colin27_t1.nii.gz"), moving)
        conform_256(data_path("mni2009a_t1.nii.gz"), fixed)
        model = ilex.load(os.path.join(ROOT, "tests", "fixtures", "net_e32_uniform.h5"))
        result = register(moving, fixed, model, method="deform", extent=256)
        moved = np.asarray(result.moved().dataobj)  # moved() is a nibabel image on the fixed grid
        jac_s, _, report = timed(lambda: quality_report(result), args.repeats)
        record = {
            "moving": moving,
            "fixed": fixed,
            "model": "deform",
            "hyper": 0.5,
            "steps": 7,
            "extent": 256,
            **report.statistics(),
        }
        metrics_s, metrics_all, metrics = timed(lambda: pair_metrics(result, report.jacobian, moved), args.repeats)
        record.update(metrics)
        slices_s, slices_all, slices = timed(
            lambda: cut_slices(result.fixed.data, moved, report.jacobian, result.fixed.affine), args.repeats
        )
        slices.info = {"times": dict(result.times), "memory_gib": dict(result.memory)}
        render_s, render_all, page = timed(lambda: render(record, slices), args.repeats)
        out = os.path.join(tmp, "qc")
        os.makedirs(out)
        write_s, write_all, _ = timed(lambda: write_pair_report(out, record, slices), args.repeats)
        html_bytes = os.path.getsize(os.path.join(out, "report.html"))
        npz_bytes = os.path.getsize(os.path.join(out, "report.npz"))
        study_s = study_bytes = None
        if args.study:
            from ilex.qc.study_report import write_study_report

            with open(os.path.join(out, "qc.json"), "w", encoding="utf-8") as f:
                json.dump(record, f)
            rng = __import__("random").Random(0)
            records = [
                {
                    "pair": f"sub-{k:03d}",
                    "index": k,
                    "moving": moving,
                    "fixed": fixed,
                    "status": "done",
                    "seconds": 30 + rng.random() * 5,
                    "peak_memory_gib": 2.3 + rng.random() * 0.1,
                    "folding_percent": 0.0,
                    "error": "",
                    "outputs": {"qc": out},
                }
                for k in range(1, args.study + 1)
            ]
            start = time.perf_counter()
            write_study_report(records, os.path.join(tmp, "study.report.html"))
            study_s = time.perf_counter() - start
            study_bytes = os.path.getsize(os.path.join(tmp, "study.report.html"))
        checker_s, _, _ = timed(lambda: checkerboard_png(result.fixed.data, moved, result.fixed.affine), args.repeats)
        from ilex.image.io import save_image

        nifti_s, _, _ = timed(
            lambda: save_image(os.path.join(tmp, "jac.nii.gz"), report.jacobian, result.fixed.affine), args.repeats
        )
    # write_pair_report renders again: its time includes render's, so the page costs metrics +
    # slices + write (write = render + encoding to disk).
    figures = {
        "provenance": provenance.finish(prov),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        "shape": [256, 256, 256],
        "repeats": args.repeats,
        "median_seconds": {
            "metrics": metrics_s,
            "slices": slices_s,
            "render": render_s,
            "write (render + files)": write_s,
            "report = metrics + slices + write": metrics_s + slices_s + write_s,
            "quality_report (Jacobian, existed before)": jac_s,
            "checkerboard.png (existed before)": checker_s,
            "jacobian.nii.gz (existed before)": nifti_s,
            "matplotlib import, once per process": import_seconds,
        },
        "all_seconds": {"metrics": metrics_all, "slices": slices_all, "render": render_all, "write": write_all},
        "median_cpu_seconds": {
            name: statistics.median(CPU[id(values)])
            for name, values in (
                ("metrics", metrics_all),
                ("slices", slices_all),
                ("render", render_all),
                ("write (render + files)", write_all),
            )
        },
        "bytes": {"report.html": html_bytes, "report.npz": npz_bytes, f"study of {args.study} pairs": study_bytes},
        "study_seconds": {f"{args.study} pairs, once": study_s},
        "page_chars": len(page),
    }
    cpu = figures["median_cpu_seconds"]
    cpu["report = metrics + slices + write"] = cpu["metrics"] + cpu["slices"] + cpu["write (render + files)"]
    for name, value in figures["median_seconds"].items():
        print(f"{name:<45} {value:6.3f} s" + (f"   (CPU {cpu[name]:.3f} s)" if name in cpu else ""))
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"report.html {html_bytes / 1e6:.2f} MB, report.npz {npz_bytes / 1e6:.2f} MB")
    if study_s is not None:
        print(f"study page of {args.study} pairs: {study_s:.1f} s, {study_bytes / 1e6:.2f} MB")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
