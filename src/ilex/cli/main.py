"""`ilex` entry point: subcommands, and one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse
import sys

from ..errors import IlexError

_EPILOG = """\
Typical use:
  ilex register moving.nii.gz fixed.nii.gz -o moved.nii.gz -t warp.nii.gz          # SynthMorph joint
  ilex register -m optimize moving.nii.gz fixed.nii.gz -o moved.nii.gz --qc qc     # no weights needed
  ilex register -m affine moving.nii.gz fixed.nii.gz -t affine.lta
  ilex batch pairs.csv -e 192
  ilex template sub-*.nii.gz -o template/ -m optimize                           # a study template
  ilex apply warp.nii.gz labels.nii.gz labels_moved.nii.gz -m nearest
  ilex convert $FREESURFER_HOME/models/synthmorph.deform.3.h5 synthmorph-bundle/

Add --debug to any command to see a full traceback on error.
"""


def build_parser() -> argparse.ArgumentParser:
    from . import apply as apply_cmd
    from . import batch as batch_cmd
    from . import convert as convert_cmd
    from . import register as register_cmd
    from . import template as template_cmd

    parser = argparse.ArgumentParser(
        prog="ilex",
        description="Registration of brain MRI of any contrast in JAX: SynthMorph's joint, deformable, affine and "
        "rigid models (FreeSurfer's mri_synthmorph), and -m optimize, which needs no trained weights.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (register_cmd, batch_cmd, template_cmd, apply_cmd, convert_cmd):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    # Like mri_synthmorph, `register` is implied when the first argument is not a command.
    commands = {"register", "batch", "template", "apply", "convert"}
    if argv and argv[0] not in commands and not argv[0].startswith("-"):
        argv.insert(0, "register")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("ilex: interrupted; no output was left half-written", file=sys.stderr)
        return 130
    except (IlexError, MemoryError) as e:
        if debug:
            raise
        message = str(e) if not isinstance(e, MemoryError) else "out of memory; try a smaller extent, e.g. -e 192"
        print(f"ilex {args.command}: error: {message}", file=sys.stderr)
        return 1
    except Exception as e:  # anything unexpected still gets one line, and --debug for details
        if debug:
            raise
        print(f"ilex {args.command}: internal error: {e.__class__.__name__}: {e} (run with --debug for a traceback)", file=sys.stderr)
        return 3
