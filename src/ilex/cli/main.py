"""`ilex` entry point: subcommands, and one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import IlexError, OptionError

_EPILOG = """\
Typical use:
  ilex register moving.nii.gz fixed.nii.gz -o moved.nii.gz -t warp.nii.gz          # SynthMorph joint
  ilex register -m optimize moving.nii.gz fixed.nii.gz -o moved.nii.gz --qc qc     # no weights needed
  ilex register -m affine moving.nii.gz fixed.nii.gz -t affine.lta
  ilex batch pairs.csv -e 192
  ilex template sub-*.nii.gz -o template/ -m optimize                           # a study template
  ilex bids ds000001 ds000001/derivatives/ilex participant -m optimize          # a BIDS App
  ilex train -o run/ --steps 2000 --extent 64 --widths 16                         # train a model (noise shapes)
  ilex apply warp.nii.gz labels.nii.gz labels_moved.nii.gz -m nearest
  ilex report qc/                                                                   # redraw qc/report.html
  ilex convert $FREESURFER_HOME/models/synthmorph.deform.3.h5 synthmorph-bundle/

Add --debug to any command to see a full traceback on error.
"""


# The flag each library argument is given by, for messages (`hyper=1.5: ...` reads `-r 1.5: ...`).
FLAGS = {
    "hyper": "-r",
    "steps": "-n",
    "extent": "-e",
    "header_only": "-H",
    "out_dir": "-d",
    "similarity": "--similarity",
    "refine": "--refine",
    "mid_space": "-M",
    "method": "-m",
    "rounds": "--rounds",
    "reference": "--reference",
    "step": "--step",
    "warp_format": "--warp-format",
    "mask_fixed": "--mask-fixed",
    "mask_moving": "--mask-moving",
    "mask_threshold": "--mask-threshold",
}

# mri_synthmorph's own commands: any unambiguous start of these words names them there, and here.
SYNTHMORPH_COMMANDS = ("register", "apply")
# Commands whose options may come anywhere among their positionals (`ilex apply W I1 O1 -m nearest I2 O2`):
# argparse otherwise ends a nargs="+" list at the first option and refuses the paths after it.
OPTIONS_ANYWHERE = ("apply",)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `ilex register: error: ...` on stderr, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


# The commands that run many registrations, rounds or steps in one process keep the memory they free for
# the next ones (`ilex._allocator`: arrays of the same sizes come and go). A single registration gains
# nothing from it and would hold more at its peak: the README's first command peaked at 1.52 GiB with
# it and 1.22 GiB without, no faster (bench/results/first_command_kept_memory_2026-12-05.json).
KEEPS_FREED_MEMORY = ("batch", "bids", "template", "train")


def build_parser() -> argparse.ArgumentParser:
    from . import apply as apply_cmd
    from . import batch as batch_cmd
    from . import bids as bids_cmd
    from . import convert as convert_cmd
    from . import register as register_cmd
    from . import report as report_cmd
    from . import template as template_cmd
    from . import train as train_cmd

    parser = _Parser(
        prog="ilex",
        description="Registration of brain MRI of any contrast in JAX: SynthMorph's joint, deformable, affine and "
        "rigid models (FreeSurfer's mri_synthmorph), and -m optimize, which needs no trained weights. As in "
        "mri_synthmorph, the register command is implied when none is given, and commands may be abbreviated "
        "(r, reg, a, app, ...).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ilex {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (register_cmd, batch_cmd, template_cmd, bids_cmd, train_cmd, apply_cmd, convert_cmd, report_cmd):
        module.add_parser(sub)
    for command in sub.choices.values():  # so that a command's errors carry its own name ("ilex batch")
        command.set_defaults(command_parser=command)
    return parser


def resolve_command(word: str, commands) -> str | None:
    """The command `word` names, as mri_synthmorph resolves it: a whole command name, or an
    unambiguous start of one, where mri_synthmorph's own commands (register, apply) come first
    (`r` is register, `a` is apply). None when `word` names no command."""
    if word in commands:
        return word
    for names in (SYNTHMORPH_COMMANDS, tuple(commands)):
        matches = [c for c in names if word and c.startswith(word)]
        if len(matches) == 1:
            return matches[0]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    # As mri_synthmorph: no arguments print the usage, a command alone prints its usage (exit 0).
    if not argv:
        parser.print_usage()
        return 0
    command = resolve_command(argv[0], commands)
    if command is not None:
        argv[0] = command
        if len(argv) == 1:
            commands[command].print_usage()
            return 0
    elif argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "register")  # `register` is implied when no command is given, as there
    if command in OPTIONS_ANYWHERE:  # the top parser cannot intermix (it has subparsers); the command's own can
        args, unknown = commands[command].parse_known_intermixed_args(argv[1:], argparse.Namespace(command=command))
    else:
        args, unknown = parser.parse_known_args(argv)
    if unknown and args.command is not None:  # named by the command's own parser: "ilex batch: error: ..."
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 2
    _warnings_as_lines(args.command)
    if args.command in KEEPS_FREED_MEMORY:
        from .._allocator import keep_freed_memory

        # Before JAX's threads first allocate (one arena serves the threads that allocate after it).
        keep_freed_memory()
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("ilex: interrupted; no output was left half-written", file=sys.stderr)
        return 130
    except (IlexError, MemoryError) as e:
        if debug:
            raise
        if isinstance(e, MemoryError):
            message = "out of memory; try a smaller extent, e.g. -e 192"
        elif isinstance(e, OptionError) and e.argument in FLAGS:
            message = e.named(FLAGS[e.argument], " ")  # the library names its argument; here, the flag
        else:
            message = str(e)
        print(f"ilex {args.command}: error: {message}", file=sys.stderr)
        return 1
    except Exception as e:  # anything unexpected still gets one line, and --debug for details
        if debug:
            raise
        print(
            f"ilex {args.command}: internal error: {e.__class__.__name__}: {e} (run with --debug for a traceback)",
            file=sys.stderr,
        )
        return 3


def _warnings_as_lines(command: str) -> None:
    """ilex's warnings as one line on stderr each ("ilex register: warning: ..."), others as Python prints them."""
    import warnings

    from ..errors import IlexWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, IlexWarning):
            print(f"ilex {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
