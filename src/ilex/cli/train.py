"""`ilex train -o RUN_DIR`: train SynthMorph's deformable hypernetwork on synthesised images (docs/train.md)."""

from __future__ import annotations

import argparse
import sys

_DESCRIPTION = """\
Train SynthMorph's deformable hypernetwork (the synthmorph.deform.3 layout) on images synthesised
from label maps: SynthMorph's noise shapes (the default; no acquired data at all), or your own label
maps (--labels). Each step draws a batch of pairs on the device, two random deformations and two
random contrasts of one label map, and minimises HyperMorph's (1 - λ)·data + λ·smoothness with λ
drawn per pair. RUN_DIR gets config.yaml (the resolved settings; --config reads it back), log.csv
(one row per step), validation.csv, checkpoints/ (every --checkpoint-every steps; --resume continues
from the newest exactly as an unbroken run), train.report.html and, at the end, bundle/: an ilex
bundle that `ilex register -m deform -w RUN_DIR/bundle -e EXTENT` runs.
"""

_EPILOG = """\
Examples:
  ilex train -o run/ --steps 2000 --extent 64 --widths 16            # a small shapes model, on a laptop
  ilex train -o run/ --labels labelmaps/ --extent 160 --widths 256   # full width, from your label maps
  ilex train -o run/ --resume                                       # continue a stopped run
  ilex train -o run/ --init synthmorph.deform.3.h5 --labels maps.csv --steps 500   # fine-tune
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a SynthMorph deformable model on synthesised images (noise shapes or your label maps)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-o", "--out-dir", required=True, metavar="RUN_DIR", help="the run folder (created; --resume reuses it)"
    )
    p.add_argument("--config", metavar="FILE", help="settings from a YAML, TOML or JSON file (options given here win)")
    p.add_argument(
        "--labels",
        metavar="DIR|CSV",
        help="label maps (NIfTI/MGZ): a folder, or a CSV with a path column; default: noise shapes",
    )
    p.add_argument(
        "--label-table", metavar="CSV", help="CSV label,new_label that merges labels (or drops them: empty or -1)"
    )
    p.add_argument(
        "--resample",
        action="store_true",
        default=None,
        help="resample label maps on other grids onto the first one's (nearest)",
    )
    p.add_argument("--steps", type=int, help="steps in all (default 1000)")
    p.add_argument(
        "--checkpoint-every", type=int, metavar="N", help="checkpoint and validate every N steps (default 100)"
    )
    p.add_argument(
        "--log-every", type=int, metavar="N", help="off a terminal, a line every N steps (default: at each checkpoint)"
    )
    p.add_argument(
        "--batch-size", type=int, metavar="B", help="pairs per step, split over the local devices (default 1)"
    )
    p.add_argument("--seed", type=int, metavar="S", help="the run's random seed (default 0)")
    p.add_argument("--extent", type=int, metavar="E", help="training grid side, a multiple of 32 (default 64)")
    p.add_argument(
        "--widths", metavar="W", help="U-Net widths: one for every convolution, or 12 comma-separated (default 64)"
    )
    p.add_argument(
        "--init",
        metavar="WEIGHTS",
        help="start from these weights (FreeSurfer's synthmorph.deform.3.h5 or an ilex bundle)",
    )
    p.add_argument(
        "--data", choices=("mse", "dice"), help="label data term: mse (one-hot MSE, the default) or dice (soft Dice)"
    )
    p.add_argument("--lambda-min", type=float, metavar="L", help="smallest λ drawn (default 0)")
    p.add_argument("--lambda-max", type=float, metavar="L", help="largest λ drawn (default 1)")
    p.add_argument(
        "--lambda-ends",
        type=float,
        metavar="P",
        help="share of pairs whose λ is exactly the smallest or largest (default 0.2)",
    )
    p.add_argument("--learning-rate", type=float, metavar="LR", help="Adam's learning rate (default 1e-4)")
    p.add_argument("--int-steps", type=int, metavar="N", help="scaling-and-squaring steps in training (default 5)")
    remat = p.add_mutually_exclusive_group()
    remat.add_argument(
        "--remat",
        dest="remat",
        action="store_true",
        default=None,
        help="recompute each U-Net pass in the backward pass (default from extent 128)",
    )
    remat.add_argument(
        "--no-remat", dest="remat", action="store_false", help="keep every activation (faster, more memory)"
    )
    p.add_argument(
        "--validate",
        metavar="PAIRS.csv",
        help="real labelled pairs scored at each checkpoint (columns moving, fixed, moving_labels, fixed_labels)",
    )
    p.add_argument("--resume", action="store_true", default=None, help="continue RUN_DIR from its newest checkpoint")
    p.set_defaults(run=run, command_parser=p)


def _widths(text: str | None):
    if text is None:
        return None
    from ..errors import OptionError

    try:
        values = [int(w) for w in text.split(",")]
    except ValueError:
        raise OptionError(f"--widths takes one integer or 12 comma-separated integers, got {text!r}") from None
    return values[0] if len(values) == 1 else tuple(values)


def run(args) -> int:
    from .._cache import enable_compilation_cache
    from ..train import train

    enable_compilation_cache()  # a resumed or repeated run loads its compiled step from disk

    names = ("labels", "label_table", "resample", "steps", "checkpoint_every", "log_every", "batch_size", "seed")
    names += ("extent", "init", "data", "lambda_min", "lambda_max", "lambda_ends", "learning_rate", "int_steps")
    names += ("remat", "validate", "resume")
    options = {name: getattr(args, name) for name in names}
    options["widths"] = _widths(args.widths)
    result = train(args.out_dir, config=args.config, **options)
    last = [r for r in result.validation if r["step"] == result.steps]
    scores = "; ".join(f"{r['kind']} Dice {r['dice_before']:.3f} -> {r['dice_after']:.3f}" for r in last)
    print(
        f"ilex train: {result.steps} steps done; bundle {result.bundle}" + (f" ({scores})" if scores else ""),
        file=sys.stderr,
    )
    return 0
