"""`ilex apply WARP IMAGE OUT [IMAGE OUT ...]`: resample images through a saved warp."""

from __future__ import annotations

import argparse

from ..errors import OptionError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "apply",
        help="apply a saved warp to images",
        description="Resample each IMAGE onto the warp's grid and write it to OUT. Reads mri_synthmorph and "
        "ilex warps (.nii.gz intent 1006, FreeSurfer .mgz) and ITK/ANTs displacement fields (.nii.gz intent 1007).",
    )
    p.add_argument("warp", metavar="WARP", help="warp file written by `ilex register -t/-T` or mri_synthmorph")
    p.add_argument("pairs", nargs="+", metavar="IMAGE OUT", help="input image and output path, repeated")
    p.add_argument("-m", "--method", choices=["linear", "nearest"], default="linear", help="interpolation; nearest for label maps (default linear)")
    p.add_argument("-t", "--type", dest="dtype", choices=["uint8", "uint16", "int16", "int32", "float32"], default="float32",
                   help="output data type (default float32)")
    p.add_argument("-f", "--fill", type=float, default=0.0, help="value outside the image (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os

    if len(args.pairs) % 2:
        raise OptionError(f"expected IMAGE OUT pairs, got {len(args.pairs)} paths; the last image has no output")
    pairs = list(zip(args.pairs[::2], args.pairs[1::2]))
    protected = {os.path.realpath(args.warp): "the warp"} | {os.path.realpath(i): f"input {i}" for i, _ in pairs}
    seen = set()
    for _, out in pairs:
        real = os.path.realpath(out)
        if real in protected:
            raise OptionError(f"{out}: the output would overwrite {protected[real]}")
        if real in seen:
            raise OptionError(f"{out}: given as output twice")
        seen.add(real)
    from .register import configure_devices

    configure_devices(None, False)
    from .._atomic import _check_parent, output_batch
    from ..image.io import load_image, save_image
    from ..image.warp_io import load_warp
    from ..registration.apply import apply_warp

    for _, out in pairs:
        _check_parent(out)
    warp = load_warp(args.warp)
    images = [load_image(i, check_values=False) for i, _ in pairs]  # all readable before anything is written
    with output_batch():  # all outputs land together, or none
        for image, (_, out) in zip(images, pairs):
            save_image(out, apply_warp(warp, image, args.method, args.fill, args.dtype), warp.affine)
    if not args.quiet:
        print("wrote " + ", ".join(out for _, out in pairs))
    return 0
