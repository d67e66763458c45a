"""`-m optimize` on its working grid, before and after, beside ANTs SyN, in one run (issue 21).

The cases, the scoring and the SyN runs are `optimize_vs_ants.py`'s (imported, not copied): see
its docstring. Here every case runs, one after the other in fresh child processes:

* `before`: ilex from another source tree (`--before-src`, e.g. a worktree of the commit before
  the working-grid change), which registers in the 1 mm, 256 mm cube;
* `after`: this tree's ilex (the images' own resolution);
* `SyN`: ANTs' `SyN` preset (antspyx).

Each ilex version runs twice per case with its own persistent compilation cache: first with
the cache empty (`first`: every XLA compilation included, as a study's first pair), then with
it warm (`cached`: a later pair of the same geometry). Seconds are the child's own, from reading
the images to the warped labels (imports excluded, as for SyN); GB its peak RSS then.

    nice python bench/working_grid_vs_ants.py --before-src /path/to/before/src \\
        --cases mni_to_spm known_warp --json bench/results/working_grid_vs_ants.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import optimize_vs_ants as base  # the cases, scores and ANTs runs


def run_ilex(spec: dict, out: str, cache: str) -> dict:
    from ilex._cache import enable_compilation_cache

    enable_compilation_cache(cache)
    import jax.numpy as jnp

    from ilex.registration.methods import OptimizeMethod
    from ilex.registration.pipeline import _resample, register
    from ilex.transforms.jacobian import folding_fraction, jacobian_determinant

    start = time.perf_counter()
    result = register(spec["moving"], spec["fixed"], method=OptimizeMethod(), extent=256)
    labels, _ = base._load(spec["moving_labels"])
    warped = np.asarray(_resample(jnp.asarray(labels), jnp.asarray(result.forward_vox), "nearest", jnp.float32(0)))
    seconds, rss = time.perf_counter() - start, base._peak_rss_gb()
    np.save(out + "_labels.npy", warped.astype(np.int16))
    np.save(out + "_warp.npy", result.forward)
    fold = float(folding_fraction(jacobian_determinant(result.forward, result.fixed.affine)))
    space = result.space
    details = result.transform.details
    return {
        "seconds": seconds,
        "peak_rss_gb": rss,
        "stages": {k: float(v) for k, v in result.times.items()},
        "grid": [int(n) for n in getattr(space, "shape", (space.extent,) * 3)],
        "moving_grid": [int(n) for n in getattr(space, "moving_shape", (space.extent,) * 3)],
        "voxel_mm": float(getattr(space, "voxel_size", 1.0)),
        "levels": [int(x) for x in details["levels"]],
        "similarity": details["similarity"],
        "profile": json.loads(json.dumps(details["profile"], default=float)),
        "folding_percent": 100 * fold,
    }


def child(argv) -> None:
    tool, spec = argv[0], json.loads(argv[1])
    if tool == "SyN":
        result = base.run_ants(spec, spec["out"], "SyN")
    else:
        result = run_ilex(spec, spec["out"], spec["cache"])
    print("RESULT " + json.dumps(result))


def spawn(tool: str, spec: dict, src: str | None) -> dict:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", tool, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    wall = time.perf_counter() - t0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    result = json.loads(line[7:])
    result["process_seconds"] = wall
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "tests", ".data"))
    ap.add_argument("--cases", nargs="+", default=["mni_to_spm", "known_warp"], choices=base.CASES)
    ap.add_argument("--before-src", help="src/ of the tree to compare with (omit: no `before` rows)")
    ap.add_argument("--amplitude", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=os.path.join(HERE, "results", "working_grid_vs_ants.json"))
    args = ap.parse_args()
    import platform

    report = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
        },
        "before_src": args.before_src,
        "cases": {},
    }
    versions = ([("before", args.before_src)] if args.before_src else []) + [("after", os.path.join(ROOT, "src"))]
    with tempfile.TemporaryDirectory() as work:
        for case in args.cases:
            spec = base.prepare(case, args.data, work, args.amplitude, args.seed)
            rows = {}
            runs = [(f"{v} {when}", v, src) for v, src in versions for when in ("first", "cached")]
            for name, version, src in [*runs, ("SyN", None, None)]:
                out = os.path.join(work, f"{case}_{name.replace(' ', '_')}")
                cache = os.path.join(work, f"cache_{case}_{version}")
                r = spawn("SyN" if version is None else "ilex", dict(spec, out=out, cache=cache), src)
                if "error" not in r:
                    r.update(base.score(spec, out))
                rows[name] = r
                shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "profile"}
                print(case, name, shown, flush=True)
            for name in [n for n, _, _ in runs]:
                if "seconds" in rows[name] and "seconds" in rows["SyN"]:
                    rows[name]["time_vs_SyN"] = rows[name]["seconds"] / rows["SyN"]["seconds"]
            report["cases"][case] = rows
            base._write(args.json, report)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    base._write(args.json, report)
    print_table(report)


def print_table(report: dict) -> None:
    print("\n| case | run | grid (voxel) | Dice | warp err mm | fold % | s | x SyN | GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case, rows in report["cases"].items():
        for name, r in rows.items():
            if "error" in r:
                print(f"| {case} | {name} | error: {r['error'][-80:]!r} | | | | | | |")
                continue
            grid = f"{'x'.join(map(str, r['grid']))} ({r['voxel_mm']:g} mm)" if "grid" in r else "fixed grid"
            f = lambda k, fmt, r=r: format(r[k], fmt) if k in r else ""
            print(
                f"| {case} | {name} | {grid} | {f('dice_mean', '.3f')} | {f('warp_error_mean_mm', '.2f')} | "
                f"{f('folding_percent', '.3f')} | {f('seconds', '.1f')} | {f('time_vs_SyN', '.2f')} | "
                f"{f('peak_rss_gb', '.2f')} |"
            )


if __name__ == "__main__":
    main()
