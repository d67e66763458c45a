"""Where a fresh `-m optimize` process spends its fixed time: imports, tracing, lowering, XLA compilation and
reading the persistent compilation cache (issue 34's time goals on small images).

Each case of bench/cases.py named by `--cases` is registered in fresh child processes, as
bench/optimize_vs_ants.py's `ilex` and `ilex-cached` tools run it: first with JAX's persistent
compilation cache in an empty folder (`first`), then again with the folder that run filled (`cached`).
The child times its imports and its registration, and adds up JAX's own monitoring events
(`jax.monitoring`): jaxpr tracing, lowering to MLIR, backend compilation (per function), cache
retrievals and hits. The parent also times the whole child (`process_seconds`). JAX's compile event
wraps the lookup in the persistent cache: in a first run it includes writing the cache, and in a
cached run its count is the cache's hits, not compilations.

    python bench/compile_costs.py --cases inia19_affine_contrast known_warp --json bench/results/compile_costs_DATE.json

The JSON (and the .md beside it) start with the run's provenance (bench/provenance.py).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import provenance

EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
    "/jax/compilation_cache/cache_retrieval_time_sec": "cache_read",
}


def child(spec: dict) -> dict:
    """One registration in this (fresh) process; its seconds by kind of fixed cost."""
    started = time.perf_counter()
    import jax.monitoring

    seconds, counts, by_function = collections.Counter(), collections.Counter(), collections.Counter()

    def on_duration(event: str, duration: float, **kwargs) -> None:
        kind = EVENTS.get(event)
        if kind is None:
            return
        seconds[kind] += duration
        counts[kind] += 1
        if kind == "compile":
            by_function[str(kwargs.get("fun_name", "?"))] += duration

    def on_event(event: str, **kwargs) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            counts["cache_hits"] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    from ilex._cache import enable_compilation_cache

    enable_compilation_cache(spec["cache"], enable=True)
    from ilex.registration.methods import OptimizeMethod
    from ilex.registration.pipeline import register

    imported = time.perf_counter()
    result = register(spec["moving"], spec["fixed"], method=OptimizeMethod(), extent=256)
    _ = result.forward  # the dense field, as the benchmark's child writes it
    done = time.perf_counter()
    return {
        "import_seconds": imported - started,
        "register_seconds": done - imported,
        "jax_seconds": dict(seconds),
        "jax_counts": dict(counts),
        "compile_by_function": dict(by_function.most_common()),
        "profile": result.transform.details.get("profile"),
    }


def run_child(spec: dict) -> dict:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["process_seconds"] = time.perf_counter() - start
    row["load_average_1min"] = os.getloadavg()[0]
    return row


def table(report: dict) -> str:
    lines = [
        (
            "| case | run | process s | imports s | register s | trace s | lower s | compile events s (programs) "
            "| cache read s |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, runs in report["cases"].items():
        for name, r in runs.items():
            s, n = r["jax_seconds"], r["jax_counts"]
            lines.append(
                f"| `{case}` | {name} | {r['process_seconds']:.2f} | {r['import_seconds']:.2f} | "
                f"{r['register_seconds']:.2f} | {s.get('trace', 0):.2f} | {s.get('lower', 0):.2f} | "
                f"{s.get('compile', 0):.2f} ({n.get('compile', 0)}) | {s.get('cache_read', 0):.2f} |"
            )
    first = {case: runs["first"]["compile_by_function"] for case, runs in report["cases"].items()}
    lines += ["", "Backend compilation in the first run, the largest functions (s):", ""]
    for case, functions in first.items():
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(functions.items())[:8])
        lines.append(f"* `{case}`: {top}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["inia19_affine_contrast", "known_warp"])
    parser.add_argument("--data", default=os.path.join(ROOT, "tests", ".data"))
    parser.add_argument("--json", help="result file (a markdown table is written beside it, .md)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if not args.json:
        parser.error("--json is required")
    from cases import CASES, prepare

    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        raise SystemExit(f"--cases: unknown {', '.join(unknown)}; known: {', '.join(CASES)}")
    prov = provenance.collect()
    report = {"provenance": prov, "cases": {}}
    with tempfile.TemporaryDirectory() as work:
        for case in args.cases:
            spec = prepare(case, args.data, work, 8.0, 0)
            cache = os.path.join(work, f"cache_{case}")  # empty: the first run fills it
            runs = report["cases"][case] = {}
            for name in ("first", "cached"):
                runs[name] = run_child({"moving": spec["moving"], "fixed": spec["fixed"], "cache": cache})
                print(case, name, {k: v for k, v in runs[name].items() if k != "profile"}, flush=True)
                report["provenance"] = provenance.finish(prov)
                with open(args.json, "w", encoding="utf-8") as f:
                    json.dump(report, f, indent=2)
                    f.write("\n")
    with open(os.path.splitext(args.json)[0] + ".md", "w", encoding="utf-8") as f:
        f.write(
            "# A fresh -m optimize process's fixed costs (bench/compile_costs.py)\n\n"
            + provenance.markdown(report["provenance"])
            + "\n"
            + table(report)
        )


if __name__ == "__main__":
    main()
