"""Time and peak memory of the README's first command's registration, as a user runs it.

The command is `ilex register -m optimize` of Colin27 onto MNI152 2009a with `-o`, `-t` and `--qc`
(the README's first line, after the install and the fetch). Each run is a fresh process; its wall
time is the whole command (interpreter start, imports, compilation or the cache, the registration,
writing), its memory the process's peak resident set. `--repeats` times, in turn: once with an
empty compilation cache (a new `ILEX_COMPILATION_CACHE_DIR`), then once with the cache that run
filled. Medians are what the README quotes.

    python bench/first_command.py --repeats 3 --json bench/results/first_command_2026-12-04.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import provenance  # bench/ is not a package

MOVING, FIXED = "tests/.data/colin27_t1.nii.gz", "tests/.data/mni2009a_t1.nii.gz"


def run_once(cache: str, out: str) -> dict:
    """One `ilex register` in a fresh process with `cache` as its compilation cache."""
    argv = [sys.executable, "-m", "ilex", "register", "-m", "optimize", os.path.join(ROOT, MOVING)]
    argv += [os.path.join(ROOT, FIXED), "-o", f"{out}/moved.nii.gz", "-t", f"{out}/warp.nii.gz", "--qc", f"{out}/qc"]
    # This checkout's ilex, whichever checkout the environment was installed from.
    src = os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "ILEX_COMPILATION_CACHE_DIR": cache, "PYTHONPATH": src}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"ilex register failed ({done.returncode}): {done.stderr.strip()}")
    # RUSAGE_CHILDREN's maximum covers every child so far: a run's own peak only where it is the largest.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(f"{out}/qc/qc.json", encoding="utf-8") as f:
        folding = 100 * json.load(f)["folding_fraction"]
    return {"seconds": seconds, "peak_rss_gib_so_far": peak / 2**20, "grew": peak > before, "folding_percent": folding}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="pairs of (empty cache, filled cache) runs")
    p.add_argument("--json", required=True, metavar="FILE", help="where the result goes")
    args = p.parse_args()
    prov = provenance.collect()
    runs = []
    for k in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="ilex-first-") as work:
            cache = os.path.join(work, "cache")
            for kind in ("empty cache", "cached"):
                out = os.path.join(work, kind.replace(" ", "_"))
                os.makedirs(out)
                runs.append({"repeat": k, "kind": kind, **run_once(cache, out)})
                print(f"{kind}: {runs[-1]['seconds']:.1f} s", file=sys.stderr)
    summary = {
        kind: {"median_s": statistics.median(r["seconds"] for r in runs if r["kind"] == kind)}
        for kind in ("empty cache", "cached")
    }
    summary["peak_rss_gib"] = max(r["peak_rss_gib_so_far"] for r in runs)
    result = {"provenance": provenance.finish(prov), "command": "ilex register -m optimize (README)", "runs": runs}
    result["summary"] = summary
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
