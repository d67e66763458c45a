"""One training step of `ilex train` against voxelmorph's TensorFlow, side by side in one run (issue 31,
"Speed, side by side in one run"): the same extent, widths and batch on CPU, each side in its own fresh process.

    A = ilex:  ILEX train -o RUN_DIR --steps M+N --extent E --widths W --batch-size B --seed S [--ilex-arg ...]
               (noise shapes; each step's wall time is RUN_DIR/log.csv's `seconds`, in `step` order)
    B = TF:    TF_PYTHON bench/reference/voxelmorph_train_step.py --extent E --widths W --batch-size B
               --labels K --steps N --warmup M --threads T --seed S --out JSON
               (HyperVxmJoint deform + 2 neurite labels_to_image generators, model.train_on_batch; see
               bench/reference/README.md, "Training step against voxelmorph (TensorFlow)")

Both sides drop their first M steps (compilation / graph tracing) and report the median of the N steps after them.
The pair runs R times, alternating the order (A B, B A, A B, ...), so that a drift of the machine's load falls on
both sides; each pair gives the ratio ilex/TF of the step medians and of the peak resident memory. Peak RSS is the
whole process's, measured here from `os.wait4` (ru_maxrss of the child and anything it waited for), the same way on
both sides. With `--threads T` below the CPU count both children are pinned to the first T CPUs; TF also gets
T intra- and inter-op threads.

    # the TF environment: bash bench/reference/build_tf_env.sh   (/tmp/tfref, never a dependency of ilex)
    python bench/train_vs_voxelmorph.py --extent 64 --widths 16 --batch-size 1 --labels 8 --steps 5 --warmup 2 \\
        --repeats 3 --json /tmp/train_vs_vxm_e64.json
    python bench/train_vs_voxelmorph.py --sides tf ...    # one side alone (the other is skipped)

`--ilex "python -m ilex"` (the default: this interpreter's `-m ilex`) is split with shlex, so another command can
stand in. `--labels K` is the TF side's label count; ilex uses its own default number of noise-shape labels unless
`--ilex-arg` passes one. The JSON starts with the run's provenance (bench/provenance.py) and is rewritten after
every process, so a run cut short keeps what it measured. Goal (issue 31): ilex at most 0.3x the time and 0.5x the
peak memory of TF.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import provenance

TF_SCRIPT = os.path.join(HERE, "reference", "voxelmorph_train_step.py")
GOAL_TIME, GOAL_MEMORY = 0.3, 0.5


def run_measured(argv: list[str], log_path: str, cpus: int | None, env: dict | None = None) -> dict:
    """Run `argv` to completion with stdout+stderr in `log_path`; wall time, exit code and the peak RSS (bytes)
    that `os.wait4` reports for it."""
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        if cpus is not None:  # at once, before the child's thread pools start (they inherit it)
            os.sched_setaffinity(proc.pid, range(cpus))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keeps Popen from waiting again
    return {
        "argv": argv,
        "exit": proc.returncode,
        "wall_seconds": wall,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "log": log_path,
    }


def _tail(path: str, n: int = 3000) -> str:
    with open(path, errors="replace") as f:
        return f.read()[-n:]


def run_tf(args, work: str, r: int, cpus: int | None) -> dict:
    out = os.path.join(work, f"tf_{r}.json")
    argv = [
        args.tf_python,
        TF_SCRIPT,
        "--extent",
        str(args.extent),
        "--widths",
        args.widths,
        "--batch-size",
        str(args.batch_size),
        "--labels",
        str(args.labels),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed + r),
        "--out",
        out,
    ]
    run = run_measured(argv, os.path.join(work, f"tf_{r}.log"), cpus)
    if run["exit"] != 0 or not os.path.exists(out):
        raise RuntimeError(f"TF side failed (exit {run['exit']}):\n{_tail(run['log'])}")
    with open(out) as f:
        own = json.load(f)
    run.update(
        step_seconds=own["step_seconds"],
        warmup_seconds=own["warmup_seconds"],
        median_step_seconds=statistics.median(own["step_seconds"]),
        self_reported_peak_rss_bytes=own["peak_rss_bytes"],
        losses=own["losses"],
        trainable_params=own["trainable_params"],
        versions=own["versions"],
        model=own["model"],
        loss=own["loss"],
        step=own["step"],
    )
    return run


def read_log_csv(path: str) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for key in ("step", "seconds"):
        if rows and key not in rows[0]:
            raise RuntimeError(f"{path}: no column {key!r} (columns: {list(rows[0])})")
    return sorted(rows, key=lambda row: int(float(row["step"])))


def run_ilex(args, work: str, r: int, cpus: int | None) -> dict:
    run_dir = os.path.join(work, f"ilex_{r}")
    total = args.warmup + args.steps
    argv = [
        *shlex.split(args.ilex),
        "train",
        "-o",
        run_dir,
        "--steps",
        str(total),
        "--extent",
        str(args.extent),
        "--widths",
        args.widths,
        "--batch-size",
        str(args.batch_size),
        "--seed",
        str(args.seed + r),
        *args.ilex_arg,
    ]
    run = run_measured(argv, os.path.join(work, f"ilex_{r}.log"), cpus)
    log_csv = os.path.join(run_dir, "log.csv")
    if run["exit"] != 0 or not os.path.exists(log_csv):
        raise RuntimeError(
            f"ilex side failed (exit {run['exit']}; {log_csv} exists: {os.path.exists(log_csv)}):\n{_tail(run['log'])}"
        )
    rows = read_log_csv(log_csv)
    if len(rows) < total:
        raise RuntimeError(f"{log_csv}: {len(rows)} step rows, expected {total} (warm-up {args.warmup} + {args.steps})")
    seconds = [float(row["seconds"]) for row in rows]
    memory = [float(row["memory"]) for row in rows if row.get("memory") not in (None, "")]
    run.update(
        step_seconds=seconds[args.warmup : total],
        warmup_seconds=seconds[: args.warmup],
        median_step_seconds=statistics.median(seconds[args.warmup : total]),
        log_csv_memory_max=max(memory) if memory else None,
        losses=[float(row["loss"]) for row in rows[:total] if row.get("loss") not in (None, "")],
    )
    return run


def summarise(pairs: list[dict]) -> dict:
    both = [p for p in pairs if "ilex" in p and "tf" in p]
    out = {}
    for side in ("ilex", "tf"):
        runs = [p[side] for p in pairs if side in p]
        if runs:
            out[side] = {
                "median_step_seconds": statistics.median(r["median_step_seconds"] for r in runs),
                "peak_rss_bytes_max": max(r["peak_rss_bytes"] for r in runs),
                "peak_rss_bytes_median": statistics.median(r["peak_rss_bytes"] for r in runs),
            }
    if both:
        time_ratio = [p["ilex"]["median_step_seconds"] / p["tf"]["median_step_seconds"] for p in both]
        rss_ratio = [p["ilex"]["peak_rss_bytes"] / p["tf"]["peak_rss_bytes"] for p in both]
        out["time_ratio_ilex_over_tf"] = time_ratio
        out["peak_rss_ratio_ilex_over_tf"] = rss_ratio
        out["time_ratio_median"] = statistics.median(time_ratio)
        out["peak_rss_ratio_median"] = statistics.median(rss_ratio)
        out["goal"] = {
            "time_at_most": GOAL_TIME,
            "memory_at_most": GOAL_MEMORY,
            "time_met": out["time_ratio_median"] <= GOAL_TIME,
            "memory_met": out["peak_rss_ratio_median"] <= GOAL_MEMORY,
        }
    return out


def _cell(run: dict | None, key: str, scale: float = 1.0) -> str:
    return "" if run is None else f"{run[key] / scale:.3f}"


def _ratio(a: dict | None, b: dict | None, key: str) -> str:
    return "" if a is None or b is None else f"{a[key] / b[key]:.3f}"


def markdown(document: dict) -> str:
    s, c = document["summary"], document["config"]
    gib = 2.0**30
    lines = [
        provenance.markdown(document["provenance"]),
        (
            f"Extent {c['extent']}, widths {c['widths']}, batch {c['batch_size']}, TF labels {c['labels']}; "
            f"median of {c['steps']} steps after {c['warmup']} warm-up steps, {c['threads']} threads; "
            f"{c['repeats']} pairs, order alternating.\n"
        ),
        (
            "| pair | order | ilex step (s) | TF step (s) | ilex/TF time | ilex peak RSS (GiB) | TF peak RSS (GiB) "
            "| ilex/TF memory |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in document["pairs"]:
        i, t = p.get("ilex"), p.get("tf")
        step, rss = "median_step_seconds", "peak_rss_bytes"
        lines.append(
            f"| {p['repeat']} | {' '.join(p['order'])} | {_cell(i, step)} | {_cell(t, step)} | {_ratio(i, t, step)} "
            f"| {_cell(i, rss, gib)} | {_cell(t, rss, gib)} | {_ratio(i, t, rss)} |"
        )
    if "time_ratio_median" in s:
        lines.append(
            f"\nMedian ratios: time {s['time_ratio_median']:.3f} (goal <= {GOAL_TIME}), peak memory "
            f"{s['peak_rss_ratio_median']:.3f} (goal <= {GOAL_MEMORY})."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extent", type=int, default=64)
    parser.add_argument("--widths", default="16", help="one width, or a comma list (passed as-is to both sides)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--labels", type=int, default=8, help="labels in the TF side's shapes maps")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process (N)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps dropped on both sides (M)")
    parser.add_argument("--repeats", type=int, default=3, help="pairs (R)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPUs for each side (T)")
    parser.add_argument("--seed", type=int, default=0, help="seed of pair 0 (pair r uses seed + r on both sides)")
    parser.add_argument("--sides", nargs="+", choices=["ilex", "tf"], default=["ilex", "tf"])
    parser.add_argument(
        "--tf-python",
        default="/tmp/tfref/bin/python",
        help="the TF reference venv's python (bench/reference/build_tf_env.sh)",
    )
    parser.add_argument(
        "--ilex", default=shlex.join([sys.executable, "-m", "ilex"]), help="command that runs ilex's CLI (shlex-split)"
    )
    parser.add_argument(
        "--ilex-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for `ilex train` (repeat the option for several)",
    )
    parser.add_argument("--work", help="scratch folder for run dirs and logs (default: a fresh temporary one, kept)")
    parser.add_argument("--json", required=True, help="result JSON")
    parser.add_argument("--md", help="also a markdown table (provenance header first)")
    args = parser.parse_args(argv)

    prov = provenance.collect(argv if argv is None else [sys.argv[0], *argv])
    work = args.work or tempfile.mkdtemp(prefix="ilex-train-vs-vxm-")
    os.makedirs(work, exist_ok=True)
    print(f"work folder: {work}", file=sys.stderr)
    cpus = args.threads if args.threads < (os.cpu_count() or args.threads) else None
    config = {
        k: getattr(args, k)
        for k in (
            "extent",
            "widths",
            "batch_size",
            "labels",
            "steps",
            "warmup",
            "repeats",
            "threads",
            "seed",
            "sides",
            "tf_python",
            "ilex",
            "ilex_arg",
        )
    }
    config.update(
        pinned_cpus=cpus,
        order="alternating: pair r runs ilex first when r is even",
        tf_script=os.path.relpath(TF_SCRIPT, ROOT),
        work=work,
    )
    document = {"provenance": prov, "config": config, "pairs": [], "summary": {}}

    def write():
        document["summary"] = summarise(document["pairs"])
        provenance.finish(prov)
        with open(args.json, "w") as f:
            json.dump(document, f, indent=1)
        if args.md:
            with open(args.md, "w") as f:
                f.write(markdown(document))

    runners = {"ilex": run_ilex, "tf": run_tf}
    for r in range(args.repeats):
        order = [s for s in (["ilex", "tf"] if r % 2 == 0 else ["tf", "ilex"]) if s in args.sides]
        pair = {"repeat": r, "order": order}
        document["pairs"].append(pair)
        for side in order:
            load = os.getloadavg()[0]
            run = runners[side](args, work, r, cpus)
            run["load_average_1min"] = [load, os.getloadavg()[0]]
            pair[side] = run
            print(
                f"pair {r} {side}: median step {run['median_step_seconds']:.3f} s, "
                f"peak RSS {run['peak_rss_bytes'] / 2**30:.2f} GiB, process {run['wall_seconds']:.0f} s",
                file=sys.stderr,
            )
            write()
    write()
    s = document["summary"]
    if "time_ratio_median" in s:
        print(
            f"ilex/TF: time {s['time_ratio_median']:.3f}, peak RSS {s['peak_rss_ratio_median']:.3f} "
            f"(medians over {args.repeats} pairs)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
