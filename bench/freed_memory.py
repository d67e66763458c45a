"""How long filling a new array takes with freed memory handed back to the system (glibc's default)
and kept in the process (`ilex._allocator.keep_freed_memory`, what ilex's batch, bids, template and train commands do).

In a fresh process for each setting, a worker thread (as a template's sums and outputs run) makes
`--repeats` new float64 arrays of `--megabytes` MB from a float32 one (a 1 mm warp's residual scaled
into float64: 7.1 M voxels x 3 = 170 MB), `--pause` seconds apart (a round's pairs land seconds
apart), each freed before the next; the first fills memory the process never had, the others
memory that was freed in between.

    python bench/freed_memory.py --json bench/results/freed_memory_DATE.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import provenance

SETTINGS = {"handed back (glibc's default)": "0", "kept (the ilex command)": "1"}


def child(megabytes: float, repeats: int, pause: float) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from ilex._allocator import keep_freed_memory

    kept = keep_freed_memory()
    source = np.ones(int(megabytes * 2**20 / 8), np.float32)

    def fill() -> float:
        start = time.perf_counter()
        array = np.multiply(source, 2.0**24, dtype=np.float64)
        seconds = time.perf_counter() - start
        del array
        return seconds

    times = []
    with ThreadPoolExecutor(1) as pool:
        for _ in range(repeats):
            times.append(pool.submit(fill).result())
            time.sleep(pause)
    return {"kept": kept, "seconds": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=float, default=170.0)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--pause", type=float, default=3.0)
    parser.add_argument("--json", help="result file (a markdown table is written beside it, .md)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = ["--megabytes", str(args.megabytes), "--repeats", str(args.repeats), "--pause", str(args.pause)]
    if args.child:
        print(json.dumps(child(args.megabytes, args.repeats, args.pause)))
        return
    if not args.json:
        parser.error("--json is required")
    prov = provenance.collect()
    rows = []
    for name, value in SETTINGS.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        env["ILEX_KEEP_FREED_MEMORY"] = value
        done = subprocess.run(
            [sys.executable, __file__, "--child", *sizes], env=env, capture_output=True, text=True, check=True
        )
        row = {"memory": name, **json.loads(done.stdout.strip().splitlines()[-1])}
        row["first_seconds"] = row["seconds"][0]
        row["median_later_seconds"] = statistics.median(row["seconds"][1:])
        rows.append(row)
        print(row, flush=True)
    report = {"provenance": provenance.finish(prov), **vars(args), "runs": rows}
    report.pop("child")
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    lines = ["| freed memory | first s | later s (median) | each s |", "|---|---:|---:|---|"]
    for r in rows:
        each = ", ".join(f"{t:.2f}" for t in r["seconds"])
        lines.append(f"| {r['memory']} | {r['first_seconds']:.2f} | {r['median_later_seconds']:.2f} | {each} |")
    with open(os.path.splitext(args.json)[0] + ".md", "w", encoding="utf-8") as f:
        f.write(
            f"# Filling a new {args.megabytes:g} MB array, freed memory handed back or kept (bench/freed_memory.py)\n\n"
            + provenance.markdown(report["provenance"])
            + f"\nA worker thread fills {args.repeats} new arrays, {args.pause:g} s apart, each freed before the next."
            + "\n\n"
            + "\n".join(lines)
            + "\n"
        )


if __name__ == "__main__":
    main()
