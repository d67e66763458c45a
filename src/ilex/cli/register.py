"""`ilex register MOVING FIXED`: mri_synthmorph's `register -m deform`, option for option."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import OptionError

_DESCRIPTION = """\
Deformable registration of MOVING onto FIXED with SynthMorph, as `mri_synthmorph register -m deform`
does: both images are resampled into a 1 mm LIA cube centred on the fixed image, the network
predicts a stationary velocity field from two symmetric passes, and scaling and squaring gives a
diffeomorphic forward warp and its inverse. Images of any MRI contrast, size, voxel size and
orientation; single-frame 3-D NIfTI or MGZ. The deformable model assumes the images are already
affinely aligned: pass -i with an initial affine if they are not.

Warps (-t, -T) hold RAS displacements in mm on the fixed (-t) or moving (-T) grid, written as
mri_synthmorph writes them (.nii.gz: 5-D, NIfTI intent 1006; .mgz: FreeSurfer warp), or with
--warp-format itk as the displacement field ITK/ANTs/Slicer read (LPS, intent 1007).
"""

_EPILOG = """\
Weights: -w takes an ilex bundle directory, a Hugging Face repo id, or FreeSurfer's
synthmorph.deform.3.h5. Without -w, ilex uses $FREESURFER_HOME/models/synthmorph.deform.3.h5 when it
exists, else the bundle ilex-hub/synthmorph.deform.3 from the Hugging Face hub. The weights are under
the FreeSurfer Software License.

Examples:
  ilex register t1.nii.gz mni.nii.gz -o t1_in_mni.nii.gz -t warp.nii.gz
  ilex register flair.mgz t1.mgz -i flair_to_t1.lta -r 0.7 -e 192 -T inverse.mgz
  ilex apply warp.nii.gz aseg.mgz aseg_moved.mgz -m nearest -t int32
"""


def add_parser(sub) -> None:
    p = sub.add_parser("register", help="deformable registration of a moving image to a fixed image",
                       description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("moving", help="moving image (NIfTI or MGZ)")
    p.add_argument("fixed", help="fixed image (NIfTI or MGZ)")
    p.add_argument("-m", "--model", default="deform", help="registration model; only 'deform' (the default here)")
    p.add_argument("-o", "--out-moving", metavar="FILE", help="moving image resampled onto the fixed grid")
    p.add_argument("-O", "--out-fixed", metavar="FILE", help="fixed image resampled onto the moving grid")
    p.add_argument("-t", "--trans", metavar="FILE", help="forward warp (on the fixed grid): .nii.gz or .mgz")
    p.add_argument("-T", "--inverse", metavar="FILE", help="inverse warp (on the moving grid): .nii.gz or .mgz")
    p.add_argument("-i", "--init", metavar="FILE", help="initial affine, moving to fixed: FreeSurfer LTA, ITK/ANTs .txt/.tfm or .mat")
    p.add_argument("-w", "--weights", metavar="PATH", help="bundle directory, Hugging Face repo id, or synthmorph.deform.3.h5")
    p.add_argument("-r", "--hyper", type=float, default=0.5, metavar="LAMBDA", help="regularisation weight λ in [0, 1]; higher is smoother (default 0.5)")
    p.add_argument("-n", "--steps", type=int, default=7, help="integration steps (default 7)")
    p.add_argument("-e", "--extent", type=int, default=256, help="network cube side in mm, a multiple of 32 (default 256; 192 halves the memory)")
    p.add_argument("-j", "--threads", type=int, metavar="N", help="number of CPU threads (default: all)")
    p.add_argument("-g", "--gpu", action="store_true", help="run on the GPU (needs jax with CUDA); the default is the CPU, as in mri_synthmorph")
    p.add_argument("-d", "--out-dir", metavar="DIR", help="save the network inputs as DIR/inp_1.mgz (moving) and DIR/inp_2.mgz (fixed)")
    p.add_argument("--qc", metavar="DIR", help="write a quality-control report into DIR (created if needed): Jacobian determinant "
                   "of the forward warp, folding statistics (qc.json) and a checkerboard PNG of fixed and moved")
    p.add_argument("--warp-format", choices=["freesurfer", "itk"], default="freesurfer", help="warp file convention (default freesurfer)")
    p.add_argument("--clip-percentile", type=float, metavar="P", help="clip intensities at percentile P before min-max normalisation "
                   "(the model card's variant; FreeSurfer does not clip)")
    p.add_argument("--conv", choices=["auto", "direct", "winograd", "winograd4"], default="auto",
                   help="convolution algorithm: auto (winograd4 on CPU, XLA's own on GPU), or one of them: winograd4 "
                   "(Winograd F(4,3), fastest on CPU), winograd (F(2,3): slower, half the rounding error), direct (XLA's)")
    p.add_argument("--no-memory-check", action="store_true", help="run even if the memory estimate exceeds the free memory")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=run)


def default_weights() -> str:
    """FreeSurfer's own copy when installed, else the hub bundle."""
    from ..bundle import DEFAULT_REPO_ID

    home = os.environ.get("FREESURFER_HOME")
    if home:
        candidate = os.path.join(home, "models", "synthmorph.deform.3.h5")
        if os.path.isfile(candidate):
            return candidate
    return DEFAULT_REPO_ID


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


def check_outputs(args) -> list[tuple[str, str]]:
    """(option, path) of every output; refuses clashes with inputs or each other before any work."""
    from .._atomic import _check_parent

    outs = [(opt, path) for opt, path in (("-o", args.out_moving), ("-O", args.out_fixed), ("-t", args.trans), ("-T", args.inverse)) if path]
    if args.out_dir:
        outs += [("-d", os.path.join(args.out_dir, f"inp_{k}.mgz")) for k in (1, 2)]
    if args.qc:
        from ..qc.report import QC_FILES

        if os.path.exists(args.qc) and not os.path.isdir(args.qc):
            raise OptionError(f"--qc {args.qc}: exists and is not a directory")
        if not os.path.isdir(args.qc):
            _check_parent(args.qc)
        outs += [("--qc", os.path.join(args.qc, name)) for name in QC_FILES]
    inputs = {os.path.realpath(p): name for p, name in ((args.moving, "moving"), (args.fixed, "fixed")) if p}
    seen = {}
    for opt, path in outs:
        real = os.path.realpath(path)
        if real in inputs:
            raise OptionError(f"{opt} {path}: the output would overwrite the {inputs[real]} image")
        if real in seen:
            raise OptionError(f"{opt} {path}: the same file is also given to {seen[real]}")
        seen[real] = opt
        if opt == "-d" and not os.path.isdir(args.out_dir):
            raise OptionError(f"-d {args.out_dir}: no such directory")
        if opt != "--qc" or os.path.isdir(args.qc):
            _check_parent(path)
    return outs


def run(args: argparse.Namespace) -> int:
    if not "deform".startswith(args.model):
        raise OptionError(f"-m {args.model}: ilex provides the deformable model only ('deform'); "
                          "use mri_synthmorph -m affine first and pass its LTA with -i")
    from ..registration.pipeline import check_options

    check_options(args.hyper, args.steps, args.extent)
    check_outputs(args)
    configure_devices(args.threads, args.gpu)

    import numpy as np

    from .._atomic import output_batch
    from ..image.io import load_image, save_image
    from ..image.warp_io import Warp, save_warp
    from ..progress import Stages
    from ..qc import quality_report, write_qc
    from ..registration.affine_init import read_initial_affine
    from ..registration.memory import check_memory
    from ..registration.overlap import check_overlap
    from ..registration.pipeline import register

    stages = Stages(verbose=not args.quiet, stream=sys.stdout)
    with stages("load", "images and weights"):
        moving = load_image(args.moving, what="moving image")
        fixed = load_image(args.fixed, what="fixed image")
        init = read_initial_affine(args.init, moving.affine, fixed.affine) if args.init else None
        # Before the weights: a hopeless pair should fail in seconds, not after loading 3.5 GB.
        check_overlap(moving, fixed, init if init is not None else np.linalg.inv(fixed.affine) @ moving.affine)
        weights = args.weights or default_weights()
        # Generate the U-Net for this λ once and let the 3.5 GB hypernetwork go before the network runs.
        unet = _load_weights(weights, explicit=args.weights is not None).at_hyper(args.hyper)
        if not args.gpu and not args.no_memory_check:
            check_memory(args.extent, max(unet.enc_nf + unet.dec_nf + unet.add_nf))
    result = register(moving, fixed, unet, hyper=args.hyper, steps=args.steps, extent=args.extent,
                      init_vox=init, clip_percentile=args.clip_percentile, stages=stages,
                      algorithm=None if args.conv == "auto" else args.conv)
    report = None
    if args.qc or not args.quiet:
        with stages("qc", "Jacobian determinant of the forward warp"):
            report = quality_report(result)
    # Every output lands together at the end of the block, or none does.
    with stages("write", "outputs"), output_batch():
        moved = result.moved() if args.out_moving or args.qc else None
        if args.qc:
            write_qc(args.qc, result, report, {"hyper": args.hyper, "steps": args.steps, "extent": args.extent}, moved)
        if args.out_moving:
            save_image(args.out_moving, moved, fixed.affine)
        if args.out_fixed:
            save_image(args.out_fixed, result.fixed_moved(), moving.affine)
        if args.trans:
            save_warp(args.trans, Warp(result.forward, fixed.affine, moving.affine, moving.shape), args.warp_format)
        if args.inverse:
            save_warp(args.inverse, Warp(result.inverse, moving.affine, fixed.affine, fixed.shape), args.warp_format)
        if args.out_dir:
            # Each input with its own network geometry, as mri_synthmorph writes them.
            geometries = (moving.affine @ result.space.net_to_mov, fixed.affine @ result.space.net_to_fix)
            for k, (data, geometry) in enumerate(zip(result.inputs, geometries), 1):
                save_image(os.path.join(args.out_dir, f"inp_{k}.mgz"), np.asarray(data), geometry)
    if not args.quiet:
        print(stages.summary(f"{report.summary()}; λ={args.hyper:g}, extent {args.extent}, {args.steps} steps"))
    return 0


def _load_weights(weights: str, explicit: bool):
    from ..bundle import load
    from ..errors import BundleError

    try:
        return load(weights)
    except BundleError as e:
        if explicit:
            raise
        raise BundleError(
            weights,
            "the SynthMorph weights are not available here. Get synthmorph.deform.3.h5 with FreeSurfer 7.4+ "
            "(it is in $FREESURFER_HOME/models) and pass it with -w, or convert it once with "
            "`ilex convert synthmorph.deform.3.h5 DIR` and pass -w DIR, or download the hub bundle "
            f"where there is a network (`hf download {weights}`)"
            + ("" if e.problem.startswith("not in the local") else f". Detail: {e.problem}"),
        ) from None
