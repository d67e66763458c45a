"""`ilex register MOVING FIXED`: mri_synthmorph's `register` (joint, deform, affine, rigid), option
for option, and ilex's `-m optimize`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from ..errors import OptionError

if TYPE_CHECKING:
    from ..batch import BatchSettings

_DESCRIPTION = """\
Registration of MOVING onto FIXED with SynthMorph, as `mri_synthmorph register` does. Images of any
MRI contrast, size, voxel size and orientation; single-frame 3-D NIfTI or MGZ.

Models (-m): joint (the default, as in mri_synthmorph) runs the affine network, then the deformable
one in the affine mid-space; deform assumes the images are already affinely aligned (pass -i
otherwise); affine and rigid fit a matrix only. optimize is ilex's own method and needs no trained
weights: an affine, then a diffeomorphic stationary velocity, both found by optimising the images'
similarity (LNCC for one contrast, mutual information across contrasts); --refine starts that
optimisation from a SynthMorph model's answer instead. Each image is resampled into a 1 mm LIA cube (centred
on the fixed image for deform, on each image otherwise); the deformable network predicts a stationary
velocity from two symmetric passes, and scaling and squaring gives a diffeomorphic warp and its inverse.

Transforms (-t, -T): for joint and deform, warps holding RAS displacements in mm on the fixed (-t) or
moving (-T) grid, written as mri_synthmorph writes them (.nii.gz: 5-D, NIfTI intent 1006; .mgz:
FreeSurfer warp), or with --warp-format itk as the displacement field ITK/ANTs/Slicer read (LPS,
intent 1007). For affine and rigid, matrices: a FreeSurfer LTA (.lta, moving RAS -> fixed RAS, as
mri_synthmorph writes it) or an ITK/ANTs text transform (.txt/.tfm, or --warp-format itk); a
.nii.gz/.mgz name gets the matrix as a dense warp. For every method, a .h5 name gets an ITK HDF5
composite transform as antsRegistration --write-composite-transform writes it (the affine, then for
warps a displacement field on the fixed (-t) or moving (-T) grid), which antsApplyTransforms,
nitransforms and ilex apply read.
"""

_EPILOG = """\
Weights: -w takes an ilex bundle directory, a Hugging Face repo id, or FreeSurfer's .h5 file, once per
network the model needs, in mri_synthmorph's order: joint takes synthmorph.affine.2.h5 then
synthmorph.deform.3.h5; deform, affine and rigid take synthmorph.deform.3.h5, synthmorph.affine.2.h5
and synthmorph.rigid.1.h5. Without -w, ilex uses $FREESURFER_HOME/models/<file> when it exists, else
the bundle ilex-hub/<file without .h5> from the Hugging Face hub. The weights are under the FreeSurfer
Software License.

Beyond mri_synthmorph: -r accepts the closed interval [0, 1] (mri_synthmorph: open) and -n any
count >= 1 (mri_synthmorph: >= 5); -e any multiple of 32 (mri_synthmorph: 192 or 256).

Examples:
  ilex register t1.nii.gz mni.nii.gz -o t1_in_mni.nii.gz -t warp.nii.gz
  ilex register -m affine flair.mgz t1.mgz -t flair_to_t1.lta -o flair_on_t1.mgz
  ilex register -m deform flair.mgz t1.mgz -i flair_to_t1.lta -r 0.7 -e 192 -T inverse.mgz
  ilex apply warp.nii.gz aseg.mgz aseg_moved.mgz -m nearest -t int32
"""

from ..registration.methods import DEFAULT_METHOD
from ..registration.methods import METHOD_NAMES as MODELS


def add_parser(sub) -> None:
    p = sub.add_parser(
        "register",
        help="register a moving image to a fixed image (joint, deform, affine, rigid, optimize)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("moving", help="moving image (NIfTI or MGZ)")
    p.add_argument("fixed", help="fixed image (NIfTI or MGZ), or a TemplateFlow name found in $TEMPLATEFLOW_HOME")
    add_template_resolution_argument(p)
    p.add_argument(
        "-m",
        "--model",
        default=DEFAULT_METHOD,
        metavar="MODEL",
        help=f"registration model: {', '.join(MODELS)} (default {DEFAULT_METHOD}); unambiguous abbreviations "
        "work, and a Method subclass of your own by its import path (package.module:Class)",
    )
    p.add_argument("-o", "--out-moving", metavar="FILE", help="moving image resampled onto the fixed grid")
    p.add_argument("-O", "--out-fixed", metavar="FILE", help="fixed image resampled onto the moving grid")
    p.add_argument(
        "-H",
        "--header-only",
        action="store_true",
        help="affine/rigid: write -o/-O with the voxels unchanged and only the voxel-to-RAS matrix updated",
    )
    p.add_argument(
        "-t",
        "--trans",
        metavar="FILE",
        help="forward transform: warp (.nii.gz/.mgz), ITK composite (.h5) or, for affine/rigid, .lta/.txt",
    )
    p.add_argument("-T", "--inverse", metavar="FILE", help="inverse transform, as -t")
    p.add_argument(
        "-i",
        "--init",
        metavar="FILE",
        help="initial affine, moving to fixed: FreeSurfer LTA, ITK/ANTs .txt/.tfm or .mat, or an ITK .h5 "
        "composite holding only affines (antsRegistration's for a linear registration, ilex's for -m affine/rigid)",
    )
    p.add_argument(
        "-M",
        "--mid-space",
        action="store_true",
        help="split the initial affine of -i between the images by its matrix square root (half to the moving "
        "image, the inverse of the other half to the fixed one), for symmetry; needs -i",
    )
    p.add_argument(
        "-w",
        "--weights",
        metavar="PATH",
        action="append",
        help="weights: bundle directory, Hugging Face repo id or FreeSurfer .h5; repeat for joint (affine first)",
    )
    p.add_argument(
        "-r",
        "--hyper",
        type=float,
        default=0.5,
        metavar="LAMBDA",
        help="regularisation weight λ in [0, 1]; higher is smoother (default 0.5)",
    )
    add_steps_and_extent_arguments(p)
    p.add_argument("-j", "--threads", type=int, metavar="N", help="number of CPU threads (default: all)")
    p.add_argument(
        "-g",
        "--gpu",
        action="store_true",
        help="run on the GPU (needs jax with CUDA); the default is the CPU, as in mri_synthmorph",
    )
    p.add_argument(
        "-d",
        "--out-dir",
        metavar="DIR",
        help="save the network inputs as DIR/inp_1.mgz (moving) and DIR/inp_2.mgz (fixed); DIR is created",
    )
    p.add_argument(
        "--qc",
        metavar="DIR",
        help="write a quality-control report into DIR (created if needed): report.html (a "
        "page to look at: before/after, Jacobian map, similarity, folding, timings), Jacobian determinant "
        "of the forward warp, folding statistics (qc.json) and a checkerboard PNG of fixed and moved",
    )
    p.add_argument(
        "--warp-format",
        choices=["freesurfer", "itk"],
        default="freesurfer",
        help=(
            "transform file convention: freesurfer (warps as mri_synthmorph, matrices as LTA) or itk "
            "(default freesurfer)"
        ),
    )
    p.add_argument(
        "--clip-percentile",
        type=float,
        metavar="P",
        help="clip intensities at percentile P before min-max normalisation "
        "(the model card's variant; FreeSurfer does not clip)",
    )
    add_conv_argument(p)
    p.add_argument(
        "--no-memory-check", action="store_true", help="run even if the memory estimate exceeds the free memory"
    )
    p.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help="do not keep compiled programs in the user cache "
        "directory ($ILEX_COMPILATION_CACHE_DIR, else ~/.cache/ilex/jax; also ILEX_NO_COMPILATION_CACHE=1)",
    )
    g = p.add_argument_group("-m optimize and --refine (ilex's own optimiser, no weights)")
    g.add_argument(
        "--refine",
        action="store_true",
        help="optimise the SynthMorph model's result further (-m deform, "
        "affine or rigid; -r then also sets the optimiser's smoothness)",
    )
    g.add_argument(
        "--similarity",
        choices=["auto", "lncc", "mi"],
        default="auto",
        help="lncc for images of one contrast, mi (mutual information) for any contrasts; auto (default) "
        "decides from the affinely aligned images",
    )
    g.add_argument(
        "--levels",
        type=int,
        nargs="+",
        metavar="VOXELS",
        help="deformable levels, coarse to fine, in voxels of the working grid (the fixed image's voxel size; "
        "default 4 2, or 2 1 where the voxels are 1.5 mm or larger; --refine: 2, on the 1 mm cube)",
    )
    g.add_argument(
        "--iterations",
        type=int,
        nargs="+",
        metavar="N",
        help="most iterations per level (default 50 20; "
        "--refine: 20); a level stops earlier when the similarity stops improving",
    )
    g.add_argument(
        "--mask-fixed",
        metavar="FILE",
        help="cost-function mask of the fixed image (NIfTI/MGZ, any grid), as ANTs' -x: the similarity is measured "
        "only where it is non-zero (e.g. the head without a lesion); the warp stays smooth through the rest",
    )
    g.add_argument("--mask-moving", metavar="FILE", help="cost-function mask of the moving image, as --mask-fixed")
    g.add_argument(
        "--mask-threshold",
        type=float,
        metavar="T",
        help="masks hold 0 and 1; with T, any values, the voxels above T being the mask",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=run)


def resolve_model(name: str) -> str:
    """The model an abbreviation names (`def` -> deform), as mri_synthmorph resolves it."""
    from ..registration.methods import resolve_method_name

    try:
        return resolve_method_name(name)
    except ValueError as e:
        raise OptionError(f"-m {name}: {e}") from None


def weights_option(model: str, given: list[str] | None, files: tuple[str, ...] | None = None) -> list[str]:
    """The weight files -m `model` loads (`files`, default its `weight_files`): -w checked
    against them, or their defaults; complaints in the command line's words (`-w: -m joint takes ...`)."""
    from ..bundle.weights import weight_paths
    from ..registration.methods import method_class

    try:
        return weight_paths(model, method_class(model).weight_files if files is None else files, given)
    except OptionError as e:
        raise OptionError(f"-w: -m {e}") from None


def add_template_resolution_argument(p, what: str = "a fixed image") -> None:
    """`--template-resolution`, as register, batch and template take it (`what`, given by a TemplateFlow name)."""
    p.add_argument(
        "--template-resolution",
        type=int,
        metavar="N",
        help=f"for {what} given by a TemplateFlow name (MNI152NLin2009cAsym): its res-N (default 1, "
        "or the template's only one)",
    )


def resolve_named_image(value: str | None, resolution: int | None, option: str) -> str | None:
    """`option`'s image (a file, a TemplateFlow name, or None) as a file path: the name's image at
    `--template-resolution`, which is refused in one line where `option` gives no name."""
    from ..templateflow import resolve_image, templateflow_name

    if resolution is not None and (value is None or templateflow_name(value) is None):
        given = f", and {value} is a file" if value is not None else ""
        raise OptionError(f"--template-resolution: it is for {option} given by a TemplateFlow name{given}")
    return None if value is None else resolve_image(value, resolution)


def add_steps_and_extent_arguments(p) -> None:
    """`-n` and `-e`, as register, batch and template take them (`settings_from_args` reads them)."""
    p.add_argument("-n", "--steps", type=int, default=7, help="integration steps (default 7)")
    p.add_argument(
        "-e",
        "--extent",
        type=int,
        default=256,
        help="network cube side in mm, a multiple of 32 (default 256; 192 needs about 40 %% less memory); "
        "-m optimize works at the fixed image's resolution instead, on at most E^3 voxels (coarser beyond)",
    )


def add_conv_argument(p) -> None:
    """`--conv`, as register, batch and template take it (`settings_from_args` reads it)."""
    p.add_argument(
        "--conv",
        choices=["auto", "direct", "winograd", "winograd4"],
        default="auto",
        help="convolution of the networks (deformable U-Net and affine detector): auto (on CPU winograd4 for the "
        "U-Net, winograd for the detector; XLA's own on GPU), or one of them for both: winograd4 "
        "(Winograd F(4,3), fastest on CPU), winograd (F(2,3): slower, half the rounding error), direct (XLA's)",
    )


def settings_from_args(args) -> dict:
    """The `ilex.Settings` fields that -r, -n, -e, --conv and --clip-percentile give, as keywords
    (register, batch and template read them the same way)."""
    return {
        "hyper": args.hyper,
        "steps": args.steps,
        "extent": args.extent,
        "algorithm": None if args.conv == "auto" else args.conv,
        "clip_percentile": getattr(args, "clip_percentile", None),
    }


def optimiser_options(args) -> dict:
    """The optimiser's options that --similarity, --levels and --iterations give (only those given), as
    keywords of `OptimizeMethod` (batch and bids read them the same way)."""
    given = {"similarity": args.similarity, "levels": args.levels, "iterations": args.iterations}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v}


def batch_settings_from_args(args, model: str, weights, warp_format: str) -> BatchSettings:
    """The `BatchSettings` that `ilex batch` and `ilex bids participant` run their pairs with: the
    method and its weight files, -r/-n/-e/--conv, the optimiser's options, --gpu and the
    compilation cache."""
    from ..batch import BatchSettings

    return BatchSettings(
        weights=weights[0] if len(weights) == 1 else tuple(weights),  # () for -m optimize: no model
        method=model,
        **settings_from_args(args),
        warp_format=warp_format,
        gpu=args.gpu,
        compilation_cache=not args.no_compilation_cache,
        options=optimiser_options(args),
    )


def configure_devices(threads: int | None, gpu: bool) -> None:
    """Pick the device and thread count before JAX starts its backends."""
    import jax

    if threads is not None:
        if threads < 1:
            raise OptionError(f"-j {threads}: the thread count must be at least 1")
        if hasattr(os, "sched_setaffinity"):
            cpus = sorted(os.sched_getaffinity(0))[:threads]
            os.sched_setaffinity(0, cpus)
    if not gpu:
        jax.config.update("jax_platforms", "cpu")
        return
    try:
        devices = jax.devices("gpu")
    except RuntimeError:
        devices = []
    if not devices:
        raise OptionError("-g: JAX sees no GPU; install jax with CUDA (pip install 'jax[cuda12]') or drop -g")


def _outputs(args) -> dict:
    return {
        "out_moving": args.out_moving,
        "out_fixed": args.out_fixed,
        "trans": args.trans,
        "inverse": args.inverse,
        "qc": args.qc,
        "out_dir": args.out_dir,
    }


def check_outputs(args, model) -> None:
    """Refuse, before any work, outputs that clash with the inputs or each other, that cannot be
    written, or that -m `model` (a name, or the `Method` class that answers) cannot produce."""
    from ..registration.outputs import check_outputs as check
    from ..registration.outputs import check_transform_outputs

    if not any(_outputs(args).values()):
        raise OptionError("no output: give at least one of -o, -O, -t, -T, --qc or -d (otherwise nothing is written)")
    check_transform_outputs(_outputs(args), model, args.header_only, args.warp_format)
    masks = {"fixed mask": getattr(args, "mask_fixed", None), "moving mask": getattr(args, "mask_moving", None)}
    check(_outputs(args), {"moving": args.moving, "fixed": args.fixed, **masks})


def run(args: argparse.Namespace) -> int:
    args.fixed = resolve_named_image(args.fixed, args.template_resolution, "FIXED")  # a TemplateFlow name: its file
    model = resolve_model(args.model)
    from ..registration.pipeline import check_options

    check_options(args.hyper, args.steps, args.extent)
    check_optimiser_options(args, model)
    if args.mid_space and not args.init:
        raise OptionError("-M splits the initial affine between the images: it needs -i")
    weights = weights_option(model, args.weights)
    from ..registration.methods import RefineMethod

    check_outputs(args, RefineMethod if args.refine else model)  # a refined result is a warp
    check_mask_arguments(args, model)
    configure_devices(args.threads, args.gpu)
    from .._cache import enable_compilation_cache

    enable_compilation_cache(enable=False if args.no_compilation_cache else None)  # a second run reads it from disk

    from ..image.io import load_image
    from ..progress import Stages
    from ..qc import quality_report
    from ..registration.affine_init import read_initial_affine
    from ..registration.memory import check_memory
    from ..registration.methods import method_class
    from ..registration.network_space import network_space
    from ..registration.outputs import write_outputs
    from ..registration.overlap import check_overlap
    from ..registration.pipeline import register
    from ..registration.settings import Settings

    stages = Stages(verbose=not args.quiet, stream=sys.stdout)
    with stages("load", "images and weights"):
        moving = load_image(args.moving, what="moving image")
        fixed = load_image(args.fixed, what="fixed image")
        init = (
            read_initial_affine(
                args.init, moving.affine, fixed.affine, moving_shape=moving.shape, fixed_shape=fixed.shape
            )
            if args.init
            else None
        )
        masks = _read_masks(args, moving, fixed)  # before the weights too
        # Before the weights: a hopeless pair should fail in seconds, not after loading 3.5 GB. Where
        # the method centres each image on itself, the pair starts from the centres laid on each other.
        facts = method_class(model)
        centred = not facts.centre_on_fixed
        space = network_space(moving, fixed, args.extent, init, centre_on_fixed=not centred)
        check_overlap(moving, fixed, space.net_to_fix @ space.mov_to_net, centred=centred and init is None)
        networks = None
        if weights:  # the weights' code (equinox) only where there are weights: -m optimize goes without
            from ..bundle.weights import load_networks, peek_width

            if not args.gpu and not args.no_memory_check:
                check_memory(args.extent, max(peek_width(w) for w in weights), detector=facts.runs_detector)
            networks = load_networks(facts, weights, explicit=bool(args.weights), hyper=args.hyper)
        method = _method(args, model, networks)
    result = register(
        moving,
        fixed,
        networks,
        settings=Settings(method=method, **settings_from_args(args)),
        init_vox=init,
        mid_space=args.mid_space,
        stages=stages,
        keep_inputs=bool(args.out_dir),
        mask_fixed=masks.get("fixed"),
        mask_moving=masks.get("moving"),
    )
    report = None
    if args.qc or not args.quiet:
        with stages("qc", "Jacobian determinant of the forward warp"):
            report = quality_report(result)
    with stages("write", "outputs"):
        settings = {"model": result.method, "hyper": args.hyper, "steps": args.steps, "extent": args.extent}
        write_outputs(
            result,
            _outputs(args),
            warp_format=args.warp_format,
            report=report,
            settings=settings,
            header_only=args.header_only,
        )
    if not args.quiet:
        deformable = not facts.yields_matrix or args.refine
        what = f"λ={args.hyper:g}, " if deformable else ""
        steps = f", {args.steps} steps" if deformable else ""
        print(stages.summary(f"{report.summary()}; -m {model}, {what}extent {args.extent}{steps}"))
    return 0


def check_optimiser_options(args, model: str) -> None:
    """-m optimize, --refine and the optimiser's options fit together (checked before any work)."""
    from ..registration.methods import method_class

    info = method_class(model)
    given = args.levels or args.iterations or args.similarity != "auto"
    if given and not (info.takes_optimiser_options or args.refine):
        raise OptionError(
            "--similarity, --levels and --iterations set the optimiser: use them with -m optimize or --refine"
        )
    if args.refine and info.takes_optimiser_options:
        raise OptionError(f"--refine refines a SynthMorph model's result; -m {model} already optimises")
    if args.refine and not info.refinable:
        raise OptionError(
            f"--refine: refining -m {model} ({info.summary}) is not supported; "
            "use -m deform (after -i) or -m affine with --refine"
        )


def check_mask_arguments(args, model: str) -> None:
    """--mask-fixed, --mask-moving and --mask-threshold fit the method, and the mask files open
    (their headers; the voxels are checked against the images once those are loaded)."""
    from ..image.io import check_image_file
    from ..registration.masks import check_mask_options
    from ..registration.methods import RefineMethod, method_class

    info = RefineMethod if args.refine else method_class(model)
    given = {"fixed": args.mask_fixed, "moving": args.mask_moving}
    check_mask_options(info.takes_masks, f"-m {model}", given, args.mask_threshold)
    for which, path in given.items():
        if path is not None:
            check_image_file(path, what=f"{which} mask")


def _read_masks(args, moving, fixed) -> dict:
    from ..registration.masks import read_mask

    images = {"fixed": fixed, "moving": moving}
    given = {"fixed": args.mask_fixed, "moving": args.mask_moving}
    return {k: read_mask(p, images[k], what=f"{k} mask", threshold=args.mask_threshold) for k, p in given.items() if p}


def _method(args, model: str, networks):
    """The registration method -m, --refine and the optimiser's options ask for."""
    from ..registration.methods import method_class

    if not (method_class(model).takes_optimiser_options or args.refine):
        return model
    from ..registration.methods import RefineMethod, as_method

    options = {"similarity": args.similarity, "progress": not args.quiet}
    options.update({k: tuple(v) for k, v in (("levels", args.levels), ("iterations", args.iterations)) if v})
    if args.refine:
        first = as_method(networks, model, hyper=args.hyper, algorithm=None if args.conv == "auto" else args.conv)
        return RefineMethod(first=first, hyper=args.hyper, steps=args.steps, **options)
    return as_method(networks, model, hyper=args.hyper, steps=args.steps, **options)
