"""`ilex convert WEIGHTS.h5 OUT_DIR`."""

from __future__ import annotations

import argparse
import os


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert FreeSurfer's SynthMorph weights (.h5) into an ilex bundle",
        description="Convert a Keras h5 weights file (FreeSurfer's synthmorph.deform.3.h5, synthmorph.affine.2.h5 or "
        "synthmorph.rigid.1.h5, found in $FREESURFER_HOME/models) into an ilex bundle directory: config.json + "
        "model.safetensors. The architecture and widths are read from the file. The weights keep the FreeSurfer "
        "Software License.",
    )
    p.add_argument("weights", metavar="WEIGHTS.h5", help="Keras h5 weights file")
    p.add_argument("out_dir", metavar="OUT_DIR", help="bundle directory to create (must not exist or be empty)")
    p.add_argument(
        "--hyper",
        "-r",
        type=float,
        metavar="LAMBDA",
        default=None,
        help="deformable model only: write only the U-Net generated for this regularisation weight λ in "
        "[0, 1] (106 MB instead of 3.5 GB for the real model; λ is then fixed)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists and is not empty")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show progress")
    g.add_argument("--quiet", "-q", dest="progress", action="store_false", help="never show progress")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..convert import convert

    out = convert(args.weights, args.out_dir, hyper=args.hyper, overwrite=args.overwrite, progress=args.progress)
    size = os.path.getsize(os.path.join(out, "model.safetensors"))
    print(f"wrote {out} ({size / 2**20:.1f} MiB of weights)")
    return 0
