"""`ilex template IMAGES... -o OUTDIR`: an unbiased study template, in rounds of batch registrations."""

from __future__ import annotations

import argparse
import sys
import time

from ..registration.methods import DEFAULT_METHOD
from .batch import add_dask_arguments, check_dask_arguments
from .register import (
    add_conv_argument,
    add_steps_and_extent_arguments,
    add_template_resolution_argument,
    resolve_named_image,
)

_DESCRIPTION = """\
Build an unbiased template of a cohort: every image is registered to the current template (one
batch per round, on this machine or a Dask cluster), the moved images are averaged, and the average
is moved by the inverse of the mean transform (log-Euclidean mean of the affines, mean of the
non-linear warps) so that it sits at the cohort's mean shape; then again, --rounds times. Without
--initial, round 0 is the affine average of the images on the first image's grid.

IMAGES are image files, or one CSV file with a header row and columns image (required), id (a name
for the outputs; default the file name) and init (an initial affine, image to template).

OUTDIR gets template.nii.gz, template_round{k}.nii.gz, rounds.csv (per round: mean and max
displacement of the mean transform in mm, mean similarity of the moved images to the template,
relative change of the template, the time per worker, waiting and the serial share, the memory
and disk stated), images/ID/ (warp.nii.gz: the forward warp on the template grid, inverse.nii.gz,
moved.nii.gz, affine.lta or .txt; with --warp-format h5, warp.h5 and inverse.h5) and qc/ (per
image, and summary.csv/.json as ilex batch writes them). A rerun with the same OUTDIR resumes
after the last complete round, and inside a round skips the registrations that finished. Carry
labels to the template with `ilex apply OUTDIR/images/ID/warp.nii.gz labels.nii.gz out.nii.gz -m nearest`.

With -m rigid or affine, a linear template of one subject's sessions (as mri_robust_template): the
template lies in the sessions' halfway space (no session favoured), on the first image's grid, the
median (default) or mean of the moved sessions, and images/ID/ holds moved.nii.gz and the matrix
session RAS -> template RAS as affine.lta, affine.txt (ITK) and affine.h5 (ITK HDF5).
"""

_EPILOG = """\
Examples:
  ilex template sub-*_T1w.nii.gz -o template/ -m optimize -e 192
  ilex template sub-01_ses-*_T1w.nii.gz -o sub-01/ -m rigid
  ilex template cohort.csv -o template/ --rounds 4 --local-workers 2
  ilex template cohort.csv -o template/ --scheduler tcp://head:8786 --initial mni.nii.gz
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "template",
        help="build an unbiased template of many images (groupwise registration)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", help="images, or one CSV file (columns image, id, init)")
    p.add_argument(
        "-o", "--out-dir", required=True, metavar="OUTDIR", help="output directory (created; reused to resume)"
    )
    p.add_argument(
        "-m",
        "--model",
        default=DEFAULT_METHOD,
        help="a method that gives a warp: joint (default, as ilex register), deform (with an "
        "affine stage each round: takes joint's two weight files), optimize (no weights); or one that gives "
        "a matrix, for a linear template of one subject's sessions: rigid or affine (SynthMorph's detector "
        "with -w, else the optimiser's affine stage, no weights); or a Method subclass of your own by its "
        "import path (package.module:Class)",
    )
    p.add_argument(
        "--average",
        choices=["median", "mean"],
        help="how a round's moved images are averaged: a linear template's default is the median (as "
        "mri_robust_template: robust to one session's motion or artefact, and sharper where sessions "
        "disagree by a voxel); a deformable template's only choice is the mean",
    )
    p.add_argument(
        "-w",
        "--weights",
        metavar="PATH",
        action="append",
        help="weights, as ilex register (joint and deform: the affine weights, then the deformable ones)",
    )
    p.add_argument(
        "-r", "--hyper", type=float, default=0.5, metavar="LAMBDA", help="regularisation weight λ (default 0.5)"
    )
    add_steps_and_extent_arguments(p)
    p.add_argument(
        "--rounds", type=int, default=4, metavar="K", help="rounds of registration and averaging (default 4)"
    )
    p.add_argument(
        "--initial",
        metavar="IMAGE",
        help="starting template, a file or a TemplateFlow name such as MNI152NLin2009cAsym (default: the affine "
        "average of the images)",
    )
    add_template_resolution_argument(p, "--initial")
    p.add_argument(
        "--step",
        type=float,
        default=1.0,
        help="step of the shape update in (0, 1]: the fraction of the inverse "
        "mean transform applied each round (default 1, as the references' full update)",
    )
    p.add_argument(
        "--sharpen", action="store_true", help="Laplacian sharpening of each new template (as ANTs' templates)"
    )
    p.add_argument(
        "--exclude-flagged",
        action="store_true",
        help="leave the images whose registration the report's rules flag (named after each round, and in "
        "rounds.csv's flagged column) out of that round's average. Off by default: on a small cohort a flag "
        "may be a false alarm, and each image left out changes the template; look at the flagged images' "
        "pages first",
    )
    p.add_argument(
        "--qc-every-round",
        action="store_true",
        help="draw every round's QC pages (qc/round-K/ID/report.html and its pictures); by default only the "
        "last round's are drawn (qc/ID/), and the other rounds write the figures the rules judge (qc.json) alone",
    )
    p.add_argument(
        "--fine-every-round",
        action="store_true",
        help="register at the method's finest detail in every round; by default the rounds before the last "
        "leave out -m optimize's finest level (the template is still changing then; the last round's warps, "
        "the ones written, are at full detail)",
    )
    p.add_argument(
        "--keep-rounds",
        action="store_true",
        help="keep each round's intermediate files (default: deleted once the round is committed)",
    )
    p.add_argument(
        "--warp-format",
        choices=["freesurfer", "itk", "h5"],
        default="freesurfer",
        help="format of the per-image warps and affines (default freesurfer). h5: each image's warp.h5 and "
        "inverse.h5 are ITK HDF5 composite transforms (an affine, then a displacement field, as "
        "antsRegistration --write-composite-transform writes; ilex apply, antspyx and ITK read them), its "
        "affine.txt ITK text",
    )
    p.add_argument("-j", "--threads", type=int, metavar="N", help="number of CPU threads (default: all)")
    add_conv_argument(p)
    p.add_argument("--no-compilation-cache", action="store_true", help="do not use the persistent compilation cache")
    p.add_argument(
        "--no-memory-check",
        action="store_true",
        help="run even if a round's memory estimate (a registration and an image's share of the sums) exceeds "
        "the free memory",
    )
    add_dask_arguments(p, "each round's registrations", "Dask (pip install 'ilex[dask]'), as ilex batch")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or round lines, only errors")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_dask_arguments(args)
    from ..registration.methods import method_class, unaligned_weight_files
    from .register import configure_devices, resolve_model, settings_from_args, weights_option

    model = resolve_model(args.model)
    if method_class(model).yields_matrix:
        # A linear template: SynthMorph's detector with -w, else the optimiser's affine stage (no weights).
        weights = weights_option(model, args.weights) if args.weights else ()
    else:
        # A method that assumes prior alignment runs its prior affine method first, and takes its files too.
        weights = weights_option(model, args.weights, unaligned_weight_files(model))
    configure_devices(args.threads, False)
    from .._cache import enable_compilation_cache

    enable_compilation_cache(enable=False if args.no_compilation_cache else None)
    images = args.images[0] if len(args.images) == 1 and args.images[0].lower().endswith(".csv") else args.images

    from ..template import build_template
    from ..template.inputs import as_inputs, check_inputs

    args.initial = resolve_named_image(args.initial, args.template_resolution, "--initial")  # a name: its file
    check_inputs(as_inputs(images), args.initial)  # before a cluster starts
    log = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr))
    start = time.perf_counter()
    client = cluster = None
    try:
        if args.scheduler or args.local_workers:
            from ..batch.dask import dask_client

            client, cluster = dask_client(args.scheduler, args.local_workers, args.memory_resource)
        result = build_template(
            images,
            args.out_dir,
            method=model,
            weights=weights,
            **settings_from_args(args),
            rounds=args.rounds,
            initial=args.initial,
            step=args.step,
            sharpen=args.sharpen,
            keep_rounds=args.keep_rounds,
            exclude_flagged=args.exclude_flagged,
            qc_every_round=args.qc_every_round,
            fine_every_round=args.fine_every_round,
            warp_format=args.warp_format,
            client=client,
            compilation_cache=not args.no_compilation_cache,
            log=log,
            progress=not args.quiet,
            memory_resource=args.memory_resource,
            memory_check=not args.no_memory_check,
            average=args.average,
        )
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    failed = [i for i in result.images if i.status == "failed"]
    for image in failed:
        print(f"ilex template: {image.id} ({image.image}) is not in the template: {image.error}", file=sys.stderr)
    if not args.quiet:
        print(
            f"ilex template: {result.path} from {len(result.images) - len(failed)} images in "
            f"{time.perf_counter() - start:.1f} s; rounds in {args.out_dir}/rounds.csv"
        )
    return 1 if failed else 0
