"""Where `ilex template`'s time goes: wall-clock totals of its main pieces over a whole run (issue 33).

Runs `ilex template ARGS...` in this process with timers around the registration stages (the
affine stage, the deformable stage), the outputs of each pair (its QC figures, the orientation
check, the warp files) and the rounds' sums, then writes their totals and call counts. The pieces
nest (the QC figures are part of a pair's outputs) and a pair's outputs are written on a second
thread while the next pair registers (`ilex.batch.local`), so the totals overlap and do not add
up to the wall time. JAX's work is asynchronous, so a piece's time is where the program waited for
it: a jitted call that only dispatches (the pyramid's copies) is left out.

    python bench/template_profile.py --json bench/results/template_profile_DATE.json -- \\
        template COHORT/sub0?.nii.gz -o OUT -m optimize -e 128 --rounds 4 -q

The cohort is what bench/template_vs_ants.py makes (its --work folder keeps it).
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib
import json
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import provenance

# (module, attribute): each is replaced by a timed copy where the code looks it up.
TIMED = (
    ("ilex.template.rounds", "Rounds.round0"),
    ("ilex.template.rounds", "Rounds.round"),
    ("ilex.template.rounds", "final_outputs"),
    ("ilex.template.rounds", "warp_share"),
    ("ilex.template.rounds", "aligned_share"),
    ("ilex.registration.methods.optimize", "optimise_affine"),
    ("ilex.registration.methods.optimize", "optimise_velocity"),
    ("ilex.registration.pipeline", "Registration._composed"),
    ("ilex.registration.pipeline", "Registration.moved"),
    ("ilex.batch.one_pair", "write_outputs"),
    ("ilex.qc", "quality_report"),
    ("ilex.qc", "write_qc"),
    ("ilex.qc.report", "pair_metrics"),
    ("ilex.qc.orientation", "orientation_check"),
    ("ilex.image.warp_io", "save_warp"),
    ("ilex.image.io", "save_image"),
    ("ilex.qc.report", "save_image"),  # bound at import there: the Jacobian map of a pair's QC pages
)


def timed(totals: dict, counts: collections.Counter) -> None:
    lock = threading.Lock()  # the outputs thread and the main thread both add
    for module, attribute in TIMED:
        owner = importlib.import_module(module)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, name)
        label = f"{module.rsplit('.', 1)[-1]}.{attribute}"

        @functools.wraps(original)
        def wrapper(*args, _original=original, _label=label, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                with lock:
                    totals[_label] += time.perf_counter() - start
                    counts[_label] += 1

        setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, help="result file (a markdown table is written beside it, .md)")
    parser.add_argument("ilex_args", nargs=argparse.REMAINDER, help="after --: the ilex command line")
    args = parser.parse_args()
    argv = args.ilex_args[1:] if args.ilex_args[:1] == ["--"] else args.ilex_args
    prov = provenance.collect()
    totals, counts = collections.defaultdict(float), collections.Counter()
    timed(totals, counts)
    from ilex.cli.main import main as ilex_main

    start = time.perf_counter()
    code = ilex_main(argv)
    wall = time.perf_counter() - start
    report = {
        "provenance": provenance.finish(prov),
        "argv": argv,
        "exit": code,
        "wall_seconds": wall,
        "pieces": {k: {"seconds": totals[k], "calls": counts[k]} for k in sorted(totals, key=lambda k: -totals[k])},
    }
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    lines = ["| piece | seconds | calls |", "|---|---:|---:|"]
    lines += [f"| `{k}` | {v['seconds']:.2f} | {v['calls']} |" for k, v in report["pieces"].items()]
    with open(os.path.splitext(args.json)[0] + ".md", "w", encoding="utf-8") as f:
        f.write(
            "# Where ilex template's time goes (bench/template_profile.py)\n\n"
            + provenance.markdown(report["provenance"])
            + f"\n`ilex {' '.join(argv)}`: exit {code}, {wall:.1f} s.\n\n"
            + "\n".join(lines)
            + "\n"
        )
    sys.exit(code)


if __name__ == "__main__":
    main()
