"""`ilex batch PAIRS.csv`: many registrations with one model load, on this machine or a Dask cluster."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time

from ..batch.pairs import ALIASES, COLUMNS
from ..errors import OptionError
from ..registration.methods import DEFAULT_METHOD, METHOD_NAMES
from .register import add_conv_argument, add_steps_and_extent_arguments, add_template_resolution_argument

_DESCRIPTION = """\
Register every pair listed in PAIRS.csv with one model load: the weights are read and the network
compiled once, then the pairs run one after another (or on a Dask cluster's workers with
--scheduler). Every row's input files are checked first: a row whose image is missing or not an
image is reported at once and fails alone. A pair that fails is reported and skipped; the others
go on. Outputs are written as `ilex register` writes them, all of a pair's files together (missing
directories are created), with a record of the settings that made them beside the first
(FIRST_OUTPUT.ilex-batch.json). A rerun skips pairs whose outputs all exist and were made with the
same settings, so a batch that crashed resumes where it stopped; a pair whose outputs were made
otherwise (another -r, say), or not by ilex batch, is redone and the summary says so. At the end a
summary (PREFIX.csv and PREFIX.json: pair, status, seconds, peak memory, folding %, error, note)
and a page to look at (PREFIX.report.html: failed pairs first, one strip plot per metric with
outliers flagged, every pair linked to its QC report) are written; the exit status is 1 if any
pair failed.

PAIRS.csv has a header row. Columns (empty cell = not set; relative paths are relative to the
CSV file's directory; a fixed cell may also be a TemplateFlow name, as ilex register's FIXED; a
column stands for the `ilex register` option of its name or short name, and docs/batch.md says
what each means):
{columns}
Every row needs at least one output.
"""

_SHORT = {column: alias for alias, column in ALIASES.items()}
# The column list from the code's own constants, so that `-h` cannot drift from what read_pairs accepts.
_DESCRIPTION = _DESCRIPTION.format(
    columns=textwrap.fill(
        ", ".join(f"{c}\N{NO-BREAK SPACE}({_SHORT[c]})" if c in _SHORT else c for c in COLUMNS),
        96,
        initial_indent="  ",
        subsequent_indent="  ",
    ).replace("\N{NO-BREAK SPACE}", " ")
)

_EPILOG = """\
Examples:
  ilex batch pairs.csv -e 192
  ilex batch pairs.csv --local-workers 2              # two worker processes on this machine (Dask)
  ilex batch pairs.csv --scheduler tcp://head:8786    # an existing Dask cluster (see docs/batch.md)

pairs.csv:
  moving,fixed,o,t,qc
  sub-01_T1w.nii.gz,mni.nii.gz,out/sub-01_moved.nii.gz,out/sub-01_warp.nii.gz,out/sub-01_qc
"""


def add_dask_arguments(p, work: str, title: str = "Dask (pip install 'ilex[dask]')"):
    """--scheduler, --local-workers and --memory-resource, as batch and template take them (`work`:
    what runs on the workers); returns the group, for a command's own cluster options."""
    cluster = p.add_argument_group(title)
    cluster.add_argument(
        "--scheduler", metavar="ADDRESS", help=f"run {work} on this Dask scheduler's workers (e.g. tcp://head:8786)"
    )
    cluster.add_argument(
        "--local-workers", type=int, metavar="N", help="start a Dask cluster of N worker processes on this machine"
    )
    cluster.add_argument(
        "--memory-resource",
        default="MEMORY",
        metavar="NAME",
        help=f"worker resource that limits how many of {work} run at once, by memory (default MEMORY: start "
        "workers with --resources MEMORY=<bytes>)",
    )
    return cluster


def check_dask_arguments(args: argparse.Namespace) -> None:
    """Refuse `add_dask_arguments`' options given together or out of range, before any work."""
    if args.scheduler and args.local_workers:
        raise OptionError("--scheduler and --local-workers: give one or the other")
    if args.local_workers is not None and args.local_workers < 1:
        raise OptionError(f"--local-workers {args.local_workers}: needs at least 1 worker")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "batch",
        help="register many pairs listed in a CSV file, with one model load",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pairs", help="CSV file, one pair per row (see above)")
    p.add_argument(
        "-w",
        "--weights",
        metavar="PATH",
        action="append",
        help="bundle directory, Hugging Face repo id, or synthmorph.deform.3.h5 (as ilex register; "
        "repeat for methods that take several models)",
    )
    p.add_argument(
        "-m",
        "--model",
        default=DEFAULT_METHOD,
        help=f"method for rows without a method column: {', '.join(METHOD_NAMES)} (default {DEFAULT_METHOD}, "
        "as ilex register), or a Method subclass of your own by its import path (package.module:Class)",
    )
    p.add_argument(
        "-r",
        "--hyper",
        type=float,
        default=0.5,
        metavar="LAMBDA",
        help="λ for rows without a hyper column (default 0.5)",
    )
    add_steps_and_extent_arguments(p)
    add_template_resolution_argument(p)
    p.add_argument("-j", "--threads", type=int, metavar="N", help="number of CPU threads (default: all)")
    p.add_argument("-g", "--gpu", action="store_true", help="run on the GPU (needs jax with CUDA)")
    p.add_argument(
        "--warp-format",
        choices=["freesurfer", "itk"],
        default="freesurfer",
        help="warp file convention (default freesurfer)",
    )
    p.add_argument(
        "--clip-percentile", type=float, metavar="P", help="clip intensities at percentile P (as ilex register)"
    )
    add_conv_argument(p)
    p.add_argument(
        "--summary",
        metavar="PREFIX",
        help="write the summary to PREFIX.csv and PREFIX.json "
        "(default: beside PAIRS.csv, named PAIRS.summary.csv/.json)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo pairs whose outputs all exist (default: skip them)")
    p.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help="do not use the persistent compilation cache "
        "(default: on, in $XDG_CACHE_HOME/ilex/jax; also ILEX_NO_COMPILATION_CACHE=1)",
    )
    p.add_argument(
        "--no-memory-check", action="store_true", help="run even if the memory estimate exceeds the free memory"
    )
    cluster = add_dask_arguments(p, "the pairs")
    cluster.add_argument(
        "--memory", type=float, metavar="BYTES", help="memory one registration needs (default: ilex's estimate)"
    )
    g = p.add_argument_group("-m optimize (rows whose method is optimize; as ilex register)")
    g.add_argument("--similarity", choices=["auto", "lncc", "mi"], help="lncc, mi or auto (default auto)")
    g.add_argument(
        "--levels",
        type=int,
        nargs="+",
        metavar="VOXELS",
        help="deformable levels in voxels of the working grid, coarse to fine (default 4 2; 2 1 for voxels >= 1.5 mm)",
    )
    g.add_argument("--iterations", type=int, nargs="+", metavar="N", help="most iterations per level (default 50 20)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or closing summary, only errors")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..registration.pipeline import check_options

    check_options(args.hyper, args.steps, args.extent)
    check_dask_arguments(args)
    from .register import configure_devices

    configure_devices(args.threads, args.gpu)
    from .._cache import enable_compilation_cache

    enable_compilation_cache(enable=False if args.no_compilation_cache else None)  # Dask workers: BatchSettings

    from ..batch import read_pairs, write_summary
    from ..batch.run import run_checked
    from .register import batch_settings_from_args, optimiser_options, resolve_model, weights_option

    model = resolve_model(args.model)
    weights = weights_option(model, args.weights)  # the defaults, or -w checked against what the model takes
    from ..templateflow import resolve_pairs

    pairs = resolve_pairs(read_pairs(args.pairs), args.pairs, args.template_resolution)  # TemplateFlow names
    from ..batch.settings import rows_set_optimiser_options

    if (
        optimiser_options(args)
        and not rows_set_optimiser_options(model)
        and not any(rows_set_optimiser_options(p.method) for p in pairs)
    ):
        raise OptionError(
            "--similarity, --levels and --iterations set the optimiser: use them with -m optimize "
            "(or rows whose method is optimize)"
        )
    settings = batch_settings_from_args(args, model, weights, args.warp_format)
    prefix = args.summary or os.path.splitext(args.pairs)[0] + ".summary"
    start = time.perf_counter()
    client = cluster = None
    try:
        if args.scheduler or args.local_workers:
            from ..batch.dask import dask_client

            client, cluster = dask_client(args.scheduler, args.local_workers, args.memory_resource)
        # Every row's files are checked, and a bad row named, before the weights load (run_checked).
        records = run_checked(
            pairs,
            settings,
            command="ilex batch",
            client=client,
            overwrite=args.overwrite,
            progress=not args.quiet,
            memory_check=not args.no_memory_check,
            memory_resource=args.memory_resource,
            memory_bytes=args.memory,
        )
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    csv_path, json_path = write_summary(records, prefix, settings)

    from ..qc.study_report import write_study_report

    report_path = write_study_report(records, f"{prefix}.report.html", settings=settings.as_record())
    elapsed = time.perf_counter() - start
    failed = [r for r in records if r.status == "failed"]
    for record in failed:
        print(f"ilex batch: {record.pair} ({record.moving} -> {record.fixed}) failed: {record.error}", file=sys.stderr)
    if not args.quiet:
        done = sum(r.status == "done" for r in records)
        skipped = sum(r.status == "skipped" for r in records)
        redone = sum(r.status == "done" and r.note.startswith("redone") for r in records)
        again = (
            f" ({redone} redone: their outputs were made with other settings or not by ilex batch)" if redone else ""
        )
        rate = f", {3600 * done / elapsed:.1f} pairs/hour" if done and elapsed > 0 else ""
        print(
            f"ilex batch: {done} done{again}, {skipped} skipped, {len(failed)} failed in {elapsed:.1f} s{rate}; "
            f"summary in {csv_path} and {json_path}; report {report_path}"
        )
    return 1 if failed else 0
