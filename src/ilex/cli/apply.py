"""`ilex apply WARP IMAGE OUT [IMAGE OUT ...]`: resample images through a saved warp."""

from __future__ import annotations

import argparse

from ..errors import OptionError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "apply",
        help="apply a saved warp or matrix to images",
        description="Resample each IMAGE onto the transform's target grid and write it to OUT. Reads mri_synthmorph "
        "and ilex warps (.nii.gz intent 1006, FreeSurfer .mgz), ITK/ANTs displacement fields (.nii.gz intent 1007), "
        "FreeSurfer LTA matrices (.lta; the target grid is the LTA's dst geometry), ITK/ANTs affine text "
        "transforms (.txt/.tfm; name the target grid with --reference) and ITK HDF5 composite transforms (.h5, "
        "ilex's and antsRegistration's; an inverse composite from antsRegistration needs --reference, the moving "
        "image). Options may come anywhere among the "
        "pairs and apply to every pair.",
    )
    p.add_argument("warp", metavar="TRANS", help="warp or matrix written by `ilex register -t/-T` or mri_synthmorph")
    p.add_argument("pairs", nargs="+", metavar="IMAGE OUT", help="input image and output path, repeated")
    p.add_argument(
        "-m",
        "--method",
        type=_interpolation,
        choices=INTERPOLATIONS,
        default="linear",
        help="interpolation: linear, or nearest for label maps (default linear); abbreviations work (l, n, near)",
    )
    p.add_argument(
        "-t",
        "--type",
        dest="dtype",
        choices=["uint8", "uint16", "int16", "int32", "float32"],
        default="float32",
        help="output data type (default float32)",
    )
    p.add_argument("-f", "--fill", type=float, default=0.0, help="value outside the image (default 0)")
    p.add_argument(
        "-H",
        "--header-only",
        action="store_true",
        help="matrices only: keep the voxels and update the voxel-to-RAS matrix instead of resampling",
    )
    p.add_argument(
        "--reference",
        metavar="IMAGE",
        help="image whose grid the outputs take (needed for ITK text transforms and antsRegistration's "
        "inverse composites; for an LTA or an ilex .h5 it replaces the grid the file records)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="apply a warp to an image on another grid than the one it records (the moving image for "
        "`ilex register -t`, the fixed for -T); refused without it",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=run)


INTERPOLATIONS = ("linear", "nearest")


def _interpolation(word: str) -> str:
    """`-m`'s value, resolving an unambiguous start (`l`, `nea`) as mri_synthmorph does."""
    matches = [m for m in INTERPOLATIONS if word and m.startswith(word)]
    return matches[0] if len(matches) == 1 else word


def run(args: argparse.Namespace) -> int:
    import os

    if len(args.pairs) % 2:
        raise OptionError(f"expected IMAGE OUT pairs, got {len(args.pairs)} paths; the last image has no output")
    pairs = list(zip(args.pairs[::2], args.pairs[1::2], strict=False))
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
    from .._atomic import output_batch
    from ..image.io import IMAGE_SUFFIXES, load_image, save_image
    from ..registration.outputs import check_creatable

    for _, out in pairs:  # one rule for every output, as ilex register's: a missing directory is created
        if not out.lower().endswith(IMAGE_SUFFIXES):
            raise OptionError(f"{out}: unknown image format; name it {', '.join(IMAGE_SUFFIXES)}")
        check_creatable(out, os.path.dirname(os.path.abspath(out)))
    from ..registration.apply import apply_saved, check_grid, load_transform

    transform = load_transform(args.warp, args.reference, args.header_only)  # errors name their flag (cli/main)
    images = [load_image(i, check_values=False) for i, _ in pairs]  # all readable before anything is written
    for image, (name, _) in zip(images, pairs, strict=True):
        if not args.force:
            check_grid(transform, image, name, "--force")
    for _, out in pairs:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with output_batch():  # all outputs land together, or none
        for image, (_, out) in zip(images, pairs, strict=False):
            save_image(out, *apply_saved(transform, image, args.method, args.fill, args.dtype, args.header_only))
    if not args.quiet:
        print("wrote " + ", ".join(out for _, out in pairs))
    return 0
