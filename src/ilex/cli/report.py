"""`ilex report QC_DIR_OR_SUMMARY`: draw a report again from the files a run already wrote."""

from __future__ import annotations

import argparse
import os

_DESCRIPTION = """\
Draw a report again from the files already written, without registering: for a QC directory
(what --qc DIR wrote: qc.json and report.npz), DIR/report.html; for a batch summary (PREFIX.json,
or PREFIX.csv beside it), PREFIX.report.html, from the summary and each pair's QC directory.
--rounds adds a template's round-by-round convergence plot to a study report.
"""

_EPILOG = """\
Examples:
  ilex report qc/                          # qc/report.html again
  ilex report pairs.summary.json           # pairs.summary.report.html
  ilex report study.json --rounds rounds.csv -o study.html
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="draw the HTML report of a QC directory or a batch summary again",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="QC directory (written by --qc) or batch summary (PREFIX.json or PREFIX.csv)")
    p.add_argument(
        "-o", "--output", metavar="FILE", help="study report: where to write it (default PREFIX.report.html)"
    )
    p.add_argument(
        "--rounds",
        metavar="CSV",
        help="study report: a template's convergence table (columns round, "
        "mean_displacement_mm, max_displacement_mm, mean_similarity, template_change)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import FileProblem, OptionError

    source = args.source
    if os.path.isdir(source):
        if args.output or args.rounds:
            raise OptionError("-o and --rounds are for a study report; a QC directory's report is DIR/report.html")
        from ..qc.html_report import rebuild_pair_report

        path = rebuild_pair_report(source)
    elif os.path.isfile(source):
        from ..qc.study_report import read_rounds, read_summary, write_study_report

        records, settings, prefix = read_summary(source)
        rounds = read_rounds(args.rounds) if args.rounds else None
        path = write_study_report(records, args.output or f"{prefix}.report.html", settings=settings, rounds=rounds)
    else:
        raise FileProblem(source, "does not exist (give a QC directory or a batch summary PREFIX.json)")
    if not args.quiet:
        print(f"ilex report: wrote {path}")
    return 0
