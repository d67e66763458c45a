"""`ilex bids BIDS_DIR OUTPUT_DIR participant|group`: a BIDS App on `ilex batch` and `ilex template`."""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..errors import OptionError
from ..registration.methods import DEFAULT_METHOD, METHOD_NAMES
from .batch import add_dask_arguments, check_dask_arguments
from .register import add_conv_argument, add_steps_and_extent_arguments

_DESCRIPTION = """\
A BIDS App (BIDS_DIR OUTPUT_DIR participant|group, as the BIDS-Apps convention has it). The
anatomical images (T1w, or --suffix) are found with pybids, narrowed by --participant-label,
--session-label and --bids-filter-file; a folder without dataset_description.json, labels the
dataset does not have, a filter file that cannot be read and a filter that matches nothing are
refused with one line before anything is written.

participant: each image registered to --template (a file, or a TemplateFlow name found in
$TEMPLATEFLOW_HOME) as one `ilex batch`, with its resume: a rerun skips the images whose outputs
exist and were made with the same settings, and redoes (and says so) those made otherwise.
Outputs, in sub-X[/ses-Y]/anat/ under BIDS-Derivatives names:
  sub-X[_ses-Y]_from-T1w_to-TPL_mode-image_xfm.h5   image -> template, ITK HDF5 composite
  sub-X[_ses-Y]_from-TPL_to-T1w_mode-image_xfm.h5   template -> image
  sub-X[_ses-Y]_space-TPL_desc-preproc_T1w.nii.gz    the image on the template's grid
and each image's QC page in sub-X/figures/sub-X[_ses-Y]_space-TPL_desc-qc/report.html; the run's
summary and study page are space-TPL_desc-ilex_summary.{csv,json,report.html}, and
dataset_description.json records the settings.

group: a study template of the images with `ilex template`, written as a TemplateFlow template,
tpl-NAME/tpl-NAME_res-1_T1w.nii.gz with template_description.json and its study page
tpl-NAME/tpl-NAME_desc-qc_report.html (the build itself, resumable, is in --work-dir).

docs/pipelines.md says how this stands in for ANTs in fMRIPrep-like workflows.
"""

_EPILOG = """\
Examples:
  ilex bids ds000001 ds000001/derivatives/ilex participant -m optimize --template MNI152NLin2009cAsym
  ilex bids ds000001 out participant --participant-label 01 02 --local-workers 2
  ilex bids ds000001 out group -m optimize --template-label study --rounds 4
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bids",
        help="a BIDS App: register a BIDS dataset's anatomy to a template, or build a study template",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bids_dir", metavar="BIDS_DIR", help="the BIDS dataset (with dataset_description.json)")
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="the derivatives folder (created)")
    p.add_argument("analysis_level", choices=["participant", "group"], help="participant or group")
    f = p.add_argument_group("which images")
    f.add_argument("--participant-label", nargs="+", metavar="LABEL", help="participants (with or without sub-)")
    f.add_argument("--session-label", nargs="+", metavar="LABEL", help="sessions (with or without ses-)")
    f.add_argument(
        "--bids-filter-file",
        metavar="FILE",
        help='JSON as fMRIPrep reads it: {"t1w": {"acquisition": "mprage", "run": 1}} (pybids\' entity names)',
    )
    f.add_argument("--suffix", default="T1w", help="the images' BIDS suffix (default T1w)")
    t = p.add_argument_group("template")
    t.add_argument(
        "--template",
        metavar="TPL",
        help="participant: the target, a TemplateFlow name (default MNI152NLin2009cAsym, found in "
        "$TEMPLATEFLOW_HOME) or an image file; group: a starting template (default: the images' affine average)",
    )
    t.add_argument(
        "--template-resolution",
        type=int,
        metavar="N",
        help="TemplateFlow resolution index (res-N; default 1, or the template's only one)",
    )
    t.add_argument(
        "--template-label",
        metavar="LABEL",
        help="participant: the to-/space- label (default the TemplateFlow name, or the file's tpl- entity or "
        "name); group: the new template's name, tpl-LABEL (default study)",
    )
    p.add_argument(
        "-m",
        "--model",
        default=DEFAULT_METHOD,
        help=f"method: {', '.join(METHOD_NAMES)} (default {DEFAULT_METHOD}, as ilex batch; group: a method that "
        "gives a warp; one subject's sessions' linear template: ilex template -m rigid)",
    )
    p.add_argument("-w", "--weights", metavar="PATH", action="append", help="weights, as ilex batch")
    p.add_argument("-r", "--hyper", type=float, default=0.5, metavar="LAMBDA", help="λ (default 0.5)")
    add_steps_and_extent_arguments(p)
    p.add_argument("-j", "--threads", type=int, metavar="N", help="number of CPU threads (default: all)")
    p.add_argument("-g", "--gpu", action="store_true", help="run on the GPU (participant; needs jax with CUDA)")
    add_conv_argument(p)
    g = p.add_argument_group("-m optimize (as ilex register)")
    g.add_argument("--similarity", choices=["auto", "lncc", "mi"], help="lncc, mi or auto (default auto)")
    g.add_argument("--levels", type=int, nargs="+", metavar="VOXELS", help="deformable levels, coarse to fine")
    g.add_argument("--iterations", type=int, nargs="+", metavar="N", help="most iterations per level")
    grp = p.add_argument_group("group")
    grp.add_argument("--rounds", type=int, default=4, metavar="K", help="template rounds (default 4)")
    grp.add_argument(
        "--work-dir",
        metavar="DIR",
        help="where the template is built, resumably (default OUTPUT_DIR/sourcedata/ilex-template/tpl-NAME)",
    )
    p.add_argument("--overwrite", action="store_true", help="participant: redo images whose outputs all exist")
    p.add_argument("--no-compilation-cache", action="store_true", help="do not use the persistent compilation cache")
    p.add_argument(
        "--no-memory-check", action="store_true", help="run even if the memory estimate exceeds the free memory"
    )
    cluster = add_dask_arguments(p, "the registrations")
    cluster.add_argument("--memory", type=float, metavar="BYTES", help="memory one registration needs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or closing summary, only errors")
    p.set_defaults(run=run)


DEFAULT_TEMPLATE = "MNI152NLin2009cAsym"


def run(args: argparse.Namespace) -> int:
    from ..registration.pipeline import check_options

    check_options(args.hyper, args.steps, args.extent)
    check_dask_arguments(args)
    if args.rounds < 1:
        raise OptionError(f"--rounds {args.rounds}: at least 1 round")
    if os.path.realpath(args.output_dir) == os.path.realpath(args.bids_dir):
        raise OptionError(f"{args.output_dir}: OUTPUT_DIR is BIDS_DIR; write derivatives to another folder")
    from .register import optimiser_options, resolve_model

    model = resolve_model(args.model)
    from ..registration.methods import method_class

    if optimiser_options(args) and not method_class(model).takes_optimiser_options:
        raise OptionError("--similarity, --levels and --iterations set the optimiser: use them with -m optimize")
    from ..bids import find_images
    from ..bids.dataset import read_filter_file

    filters = read_filter_file(args.bids_filter_file, args.suffix) if args.bids_filter_file else None
    images = find_images(
        args.bids_dir,
        participant_label=args.participant_label,
        session_label=args.session_label,
        filters=filters,
        suffix=args.suffix,
        filter_file=args.bids_filter_file,
        exclude=(args.output_dir, args.work_dir),  # an OUTPUT_DIR inside BIDS_DIR holds T1w images too
    )
    if args.analysis_level == "participant":
        return _participant(args, model, images)
    return _group(args, model, images)


def _participant(args, model: str, images) -> int:
    from ..bids.derivatives import space_label
    from ..bids.run import Cluster, participant
    from ..templateflow import resolve_image
    from .register import batch_settings_from_args, configure_devices, weights_option

    template = args.template or DEFAULT_TEMPLATE
    space = space_label(template, args.template_label)
    fixed = resolve_image(template, args.template_resolution)  # before any work: a name not found is one line
    from ..image.io import check_image_file

    check_image_file(fixed, what="template")
    weights = weights_option(model, args.weights)
    configure_devices(args.threads, args.gpu)
    from .._cache import enable_compilation_cache

    enable_compilation_cache(enable=False if args.no_compilation_cache else None)
    settings = batch_settings_from_args(args, model, weights, "itk")
    record = {
        "template": template,
        "template_resolution": args.template_resolution,
        "template_file": os.path.abspath(fixed),
        "space": space,
        "suffix": args.suffix,
        "participant_label": args.participant_label,
        "session_label": args.session_label,
        "bids_filter_file": args.bids_filter_file,
    }
    start = time.perf_counter()
    result = participant(
        images,
        fixed,
        space,
        args.bids_dir,
        args.output_dir,
        settings,
        suffix=args.suffix,
        record=record,
        cluster=Cluster(args.scheduler, args.local_workers, args.memory_resource, args.memory),
        overwrite=args.overwrite,
        progress=not args.quiet,
        memory_check=not args.no_memory_check,
    )
    records = result.records
    failed = [r for r in records if r.status == "failed"]
    for r in failed:
        print(f"ilex bids: {r.pair} ({r.moving}) failed: {r.error}", file=sys.stderr)
    if not args.quiet:
        done = sum(r.status == "done" for r in records)
        skipped = sum(r.status == "skipped" for r in records)
        redone = [r for r in records if r.status == "done" and r.note.startswith("redone")]
        for r in redone:
            print(f"ilex bids: {r.pair} {r.note}")
        again = f" ({len(redone)} redone: made with other settings or not by ilex)" if redone else ""
        print(
            f"ilex bids participant: {done} done{again}, {skipped} skipped, {len(failed)} failed in "
            f"{time.perf_counter() - start:.1f} s, to {space} ({fixed}); study page {result.report}"
        )
    return 1 if failed else 0


def _group(args, model: str, images) -> int:
    from ..bids.run import Cluster, group
    from ..registration.methods import unaligned_weight_files
    from ..templateflow import resolve_image
    from .register import configure_devices, optimiser_options, settings_from_args, weights_option

    if optimiser_options(args):
        raise OptionError("--similarity, --levels and --iterations: the group level's template runs with its defaults")
    from ..registration.methods import method_class

    if method_class(model).yields_matrix:
        # A study template across subjects is deformable by convention; a linear template is one subject's
        # sessions (longitudinal), a level below the group, which `ilex template` builds.
        raise OptionError(
            f"-m {model}: the group level builds a deformable study template (-m joint, deform or optimize); for a "
            f"linear template of one subject's sessions run ilex template SESSIONS -o DIR -m {model} "
            "(docs/template.md)"
        )
    if len(images) < 2:
        raise OptionError(f"{args.bids_dir}: a group template needs at least 2 images; the filters leave {len(images)}")
    name = args.template_label or "study"
    if not name.isalnum():
        raise OptionError(f"--template-label {name}: a BIDS label is letters and digits only")
    initial = resolve_image(args.template, args.template_resolution) if args.template else None
    weights = weights_option(model, args.weights, unaligned_weight_files(model))
    configure_devices(args.threads, False)
    from .._cache import enable_compilation_cache

    enable_compilation_cache(enable=False if args.no_compilation_cache else None)
    log = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr))
    start = time.perf_counter()
    result = group(
        images,
        name,
        args.bids_dir,
        args.output_dir,
        work_dir=args.work_dir,
        initial=initial,
        record={"suffix": args.suffix},
        cluster=Cluster(args.scheduler, args.local_workers, args.memory_resource, args.memory),
        log=log,
        progress=not args.quiet,
        suffix=args.suffix,
        method=model,
        weights=weights,
        **settings_from_args(args),
        rounds=args.rounds,
        compilation_cache=not args.no_compilation_cache,
    )
    for image in result.failed:
        print(f"ilex bids: {image.id} ({image.image}) is not in the template: {image.error}", file=sys.stderr)
    if not args.quiet:
        print(
            f"ilex bids group: {result.image} from {len(images) - len(result.failed)} images in "
            f"{time.perf_counter() - start:.1f} s; study page {result.report}"
        )
    return 1 if result.failed else 0
