"""`-m optimize` beside its peers (ANTs SyN, greedy, FireANTs) on real anatomy with labels, in one run.

The cases and their scores are in bench/cases.py (images only from `python -m tests.data --fetch`,
or `--data DIR`): spm_to_mni, mni_to_spm (2 mm fixed grid), known_warp, t2_to_mni (cross-contrast),
mni_affine_contrast (known affine and warp, changed contrast), aniso_1x1x3 (3 mm slices),
half_mm (0.5 mm, upsampled 1 mm anatomy), and issue 34's wider set on real data at its native
resolution: inia19_affine_contrast, inia19_rotate, inia19_resection (the INIA19 macaque at 0.5 mm,
724 NeuroMaps labels), mni_rotate, mni_rotate_contrast (turns of about 20 degrees) and
colin_resection. `HELD_OUT` in bench/cases.py names the held-out cases (never tuned on; their
tables say "held out"). The peers' runners are in bench/peers.py.

Every registration runs in a fresh child process, which reports its own wall time (images read,
registered, labels warped: `seconds`) and peak RSS at that point; the parent also times the whole
child process (`process_seconds`: interpreter start, imports, compilation, writing). Each tool
leaves its full map (affine and deformable composed, RAS mm on the fixed grid), which the parent
scores alike for every tool: Dice, folding (share of fixed voxels where the map's Jacobian
determinant is <= 0, `ilex.transforms.jacobian`), and on known-truth cases the warp's error.
`none` is no registration at all (the moving labels through world identity), so that a reader
sees what registration gained.

Tools: `ilex` is `-m optimize` from a cold start with JAX's persistent compilation cache on in an
empty folder of this run (so it also fills it), `ilex-cached` the same registration again with
that cache; `SyN` (antspyx, its `SyN` preset), `SyNCC` (only on `--syncc-cases`, within
`--syncc-timeout`), `greedy`, `fireants` (bench/peers.py says how each is run).

    nice python bench/optimize_vs_ants.py --json bench/results/peers_DATE.json --markdown bench/results/peers_DATE.md

Both files start with the run's provenance (commit, dirty flag, command, machine, load; bench/provenance.py);
a result committed to bench/results/ is listed in bench/results/README.md.
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

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import provenance
from cases import CASES, HELD_OUT, identity_outputs, load, prepare, score
from peers import PEERS, RUNNERS, peak_rss_gb, versions

ILEX_TOOLS = ("ilex", "ilex-cached")
DEFAULT_TOOLS = ("none", *ILEX_TOOLS, *PEERS)


# -- children: one registration each -----------------------------------------------------------------


def run_ilex(spec: dict, out: str, cache: str | None = None) -> dict:
    if cache:
        from ilex._cache import enable_compilation_cache

        enable_compilation_cache(cache, enable=True)
    import jax.numpy as jnp

    from ilex.registration.methods import OptimizeMethod
    from ilex.registration.pipeline import register, resample

    start = time.perf_counter()
    method = OptimizeMethod(similarity=spec.get("similarity", "auto"))
    result = register(spec["moving"], spec["fixed"], method=method, extent=256)
    labels, _ = load(spec["moving_labels"])
    warped = np.asarray(resample(jnp.asarray(labels), jnp.asarray(result.forward_vox), "nearest", jnp.float32(0)))
    seconds, rss = time.perf_counter() - start, peak_rss_gb()
    np.save(out + "_labels.npy", warped.astype(np.int16))
    np.save(out + "_warp.npy", np.asarray(result.forward, np.float32))
    return {
        "seconds": seconds,
        "peak_rss_gb": rss,
        "stages": result.times,
        "profile": result.transform.details["profile"],
        "similarity": result.transform.details["similarity"],
    }


def profile_operations(extent: int = 256, velocity_scale: int = 4, repeats: int = 3) -> dict:
    """Seconds per call of each operation of one deformable iteration, at each level's shape
    (random images: the arithmetic does not depend on the values), and of the whole step."""
    import jax
    import jax.numpy as jnp

    from ilex.optimize.deformable import (
        MI_BINS,
        _deformable_step,
        _optimizer,
        level_displacement,
        moved_image,
        spatial_gradient,
        to_velocity_grid,
    )
    from ilex.optimize.similarity import similarity_function
    from ilex.optimize.smoothing import gaussian_matrices, smooth
    from ilex.transforms.integrate import voxel_grid

    def timed(fn, *args):
        jitted = jax.jit(fn)
        t0 = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = jitted(*args)
        jax.block_until_ready(out)
        return {"seconds": (time.perf_counter() - t0) / repeats, "first_call_seconds": first}, out

    out = {}
    rng = np.random.default_rng(0)
    nv = extent // velocity_scale
    v = jnp.asarray(rng.normal(0, 0.5, (nv, nv, nv, 3)).astype(np.float32))
    grid_v = voxel_grid((nv,) * 3)
    mats = tuple(jnp.asarray(m) for m in gaussian_matrices((nv,) * 3, 1.5))
    for scale in (4, 2, 1):
        n, factor = extent // scale, velocity_scale // scale
        fix = jnp.asarray(rng.random((n, n, n)).astype(np.float32))
        mov = jnp.asarray(rng.random((n, n, n)).astype(np.float32))
        grid, eye = voxel_grid((n,) * 3), jnp.eye(4)
        ops = {}
        ops["exp(v) + upsampling"], disp = timed(
            lambda v, g, factor=factor, n=n: level_displacement(v, g, factor, 5, (n,) * 3), v, grid_v
        )
        ops["warp moving image"], warped = timed(moved_image, mov, eye, grid, disp)
        ops["LNCC + gradient"], _ = timed(similarity_function("lncc"), fix, warped)
        ops["MI + gradient"], (_, dsim) = timed(similarity_function("mi", bins=MI_BINS), fix, warped)
        ops["image gradient"], grad = timed(spatial_gradient, warped)

        ops["force to velocity grid"], force = timed(
            lambda f, factor=factor: to_velocity_grid(f, factor, (nv,) * 3), dsim[..., None] * grad
        )
        ops["Gaussian smoothing (velocity grid)"], _ = timed(smooth, force, mats)
        for similarity in ("lncc", "mi"):
            state = _optimizer(0.5).init(v)
            args = {
                "similarity": similarity,
                "radius": 2,
                "bins": MI_BINS,
                "factor": factor,
                "steps": 5,
                "momentum": 0.5,
            }
            t0 = time.perf_counter()
            r = _deformable_step(
                v + 0, state, fix, mov, eye, grid, grid_v, mats, mats, jnp.float32(0.5), jnp.float32(0.0), **args
            )
            jax.block_until_ready(r)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(repeats):
                r = _deformable_step(
                    r[0], r[1], fix, mov, eye, grid, grid_v, mats, mats, jnp.float32(0.5), jnp.float32(0.0), **args
                )
            jax.block_until_ready(r)
            ops[f"whole step ({similarity})"] = {
                "seconds": (time.perf_counter() - t0) / repeats,
                "first_call_seconds (compile)": first,
            }
        out[f"{scale} mm ({n}^3 images, {nv}^3 velocity)"] = ops
    return out


def child(argv) -> None:
    spec = json.loads(argv[1])
    if argv[0] == "profile":
        result = profile_operations()
    elif argv[0] in ILEX_TOOLS:
        result = run_ilex(spec, spec["out"], spec["cache"])
    else:
        result = RUNNERS[argv[0]](spec, spec["out"])
    result.setdefault("peak_rss_gb", peak_rss_gb())
    print("RESULT " + json.dumps(result))


# -- the parent: cases, children, scores -----------------------------------------------------------------


def spawn(tool: str, spec: dict, timeout: float | None) -> dict:
    src = spec.get("ilex_src") or os.path.join(ROOT, "src")  # another tree's ilex: a before/after comparison
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", tool, json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    result = json.loads(line[7:])
    result["process_seconds"] = wall
    result["load_average_1min"] = [load0, os.getloadavg()[0]]  # when the child started and ended
    return result


def run_tool(tool: str, spec: dict, work: str, repeat: int, timeout: float | None) -> dict:
    """One row: the tool on the case, `repeat` times (medians of the timings), scored once."""
    out = os.path.join(work, f"{spec['case']}_{tool}")
    if tool == "none":
        identity_outputs(spec, out)
        return score(spec, out)
    runs = []
    for _ in range(repeat):
        r = spawn(tool, dict(spec, out=out), timeout)
        if "error" in r:
            return r
        runs.append(r)
    row = dict(runs[0])
    if repeat > 1:
        for key in ("seconds", "process_seconds", "peak_rss_gb"):
            row[key] = statistics.median(r[key] for r in runs)
        row["runs"] = [
            {k: r[k] for k in ("seconds", "process_seconds", "peak_rss_gb", "load_average_1min")} for r in runs
        ]
    row.update(score(spec, out))
    return row


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "tests", ".data"))
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument(
        "--tools",
        nargs="+",
        default=list(DEFAULT_TOOLS),
        choices=["none", *ILEX_TOOLS, *RUNNERS],
        help="ilex-cached: with JAX's persistent compilation cache, filled by this case's `ilex` run (or by one "
        "unscored run when `ilex` is not among the tools)",
    )
    ap.add_argument("--repeat", type=int, default=1, help="runs of each registration; timings are their medians")
    ap.add_argument("--timeout", type=float, default=None, help="seconds allowed to one registration")
    ap.add_argument("--syncc-timeout", type=float, default=600.0)
    ap.add_argument("--syncc-cases", nargs="+", default=["known_warp"], help="cases where SyNCC is tried")
    ap.add_argument(
        "--fireants-cases", nargs="+", default=list(CASES), help="cases where FireANTs runs (slow on a CPU)"
    )
    ap.add_argument("--amplitude", type=float, default=8.0, help="largest displacement of the known warps, mm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--ilex-src",
        help="the src/ folder whose ilex runs (default: this tree's), e.g. a worktree of an earlier commit",
    )
    ap.add_argument("--profile", action="store_true", help="also time each operation of a deformable iteration")
    ap.add_argument("--no-profile", action="store_true", help="(the default now; kept for old command lines)")
    ap.add_argument("--json", required=True, help="write every figure here (bench/results/peers_DATE.json)")
    ap.add_argument("--markdown", default=None, help="also write the tables here (default: the JSON's name, .md)")
    args = ap.parse_args()
    markdown = args.markdown or os.path.splitext(args.json)[0] + ".md"
    prov = provenance.collect()

    import jax

    report = {
        "provenance": prov,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "nice": os.nice(0),
            "load_average_at_start": os.getloadavg(),
        }
        | versions(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "markdown", "data")},
        "cases": {},
    }
    with tempfile.TemporaryDirectory() as work:
        for case in args.cases:
            spec = prepare(case, args.data, work, args.amplitude, args.seed)
            spec["ilex_src"] = args.ilex_src
            spec["cache"] = os.path.join(work, f"jax-cache-{case}")
            if "ilex-cached" in args.tools and "ilex" not in args.tools:
                spawn("ilex-cached", dict(spec, out=os.path.join(work, "warmup")), None)
            rows = {}
            for tool in args.tools:
                if (tool == "SyNCC" and case not in args.syncc_cases) or (
                    tool == "fireants" and case not in args.fireants_cases
                ):
                    continue
                timeout = args.syncc_timeout if tool == "SyNCC" else args.timeout
                rows[tool] = r = run_tool(tool, spec, work, args.repeat, timeout)
                shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                print(
                    case, tool, {k: v for k, v in shown.items() if k not in ("profile", "stages", "runs")}, flush=True
                )
            report["cases"][case] = rows
            _write(args.json, markdown, report)  # after every case, so that a cut-short run still leaves its numbers
        if args.profile:
            report["operation_profile"] = spawn("profile", {}, None)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    _write(args.json, markdown, report)
    print(table(report))


def _write(path: str, markdown: str, report: dict) -> None:
    provenance.finish(report["provenance"])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    with open(markdown, "w") as f:
        f.write(table(report))


def _f(r: dict, key: str, fmt: str) -> str:
    return format(r[key], fmt) if isinstance(r.get(key), int | float) else ""


def table(report: dict) -> str:
    """One markdown table per case, with each tool's seconds and memory as a ratio to SyN's."""
    m = report["machine"]
    lines = [*report.get("notes", [])]
    if "provenance" in report:
        lines.append(provenance.markdown(report["provenance"]))
    lines += [
        f"Machine: {m['platform']}, {m['cpus']} CPUs, JAX {m['jax']} ({m['backend']}), nice {m.get('nice')}; "
        f"load average (1, 5, 15 min) {tuple(round(x, 1) for x in m['load_average_at_start'])} at the start"
        + (f", {tuple(round(x, 1) for x in m['load_average_at_end'])} at the end" if "load_average_at_end" in m else "")
        + ".",
        "Versions: "
        + ", ".join(f"{k} {m[k]}" for k in ("antspyx", "picsl_greedy", "fireants", "torch") if m.get(k))
        + ".",
        "",
    ]
    for case, rows in report["cases"].items():
        syn = rows.get("SyN", {})
        lines += [
            f"### {case}" + (" (held out)" if case in HELD_OUT else ""),
            "",
            "| tool | Dice | GM | WM | warp err mm (p95) | fold % | s | process s | s / SyN | GB | GB / SyN | load |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for tool, r in rows.items():
            if "error" in r:
                lines.append(f"| {tool} | {r['error'].strip().splitlines()[-1][:120]} |" + " |" * 11)
                continue
            err = (
                f"{_f(r, 'warp_error_mean_mm', '.2f')} ({_f(r, 'warp_error_p95_mm', '.2f')})"
                if "warp_error_mean_mm" in r
                else ""
            )
            ratio = lambda key, r=r, syn=syn: f"{r[key] / syn[key]:.2f}" if key in r and syn.get(key) else ""
            load_avg = "-".join(f"{x:.1f}" for x in r.get("load_average_1min", []))
            lines.append(
                f"| {tool} | {_f(r, 'dice_mean', '.3f')} | {_f(r, 'dice_gm', '.3f')} "
                f"| {_f(r, 'dice_wm', '.3f')} | {err} "
                f"| {_f(r, 'folding_percent', '.3f')} | {_f(r, 'seconds', '.1f')} | {_f(r, 'process_seconds', '.1f')} "
                f"| {ratio('seconds')} | {_f(r, 'peak_rss_gb', '.2f')} | {ratio('peak_rss_gb')} | {load_avg} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
