"""Trials of the deformable stage's settings on the benchmark's cross-contrast pairs, in process.

    python bench/similarity_trials.py VARIANT [CASE ...]

VARIANT is `base` or comma-separated `bins=N` (MI's histogram bins per image in the deformable
stage), `hyper=λ`, `mom=M` (the update's momentum). Prints one line, VARIANT and a JSON object:
`cases`, each case's scores (`cases.score`) and seconds, and `provenance`, the run's commit, dirty
flag, command, machine and load (bench/provenance.py). Dice is deterministic, so one run per
variant is enough; the seconds include compilation and are not a timing. The MI bins of
`optimize/deformable.py` were chosen from these (`results/mi_bins_2026-12-01.txt`, run when the
stage's bins were a constant 32 and the trials patched them in; its lines predate `provenance`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np
import provenance
from cases import CASES, load, prepare, score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", help="base, or comma-separated bins=N, hyper=λ, mom=M")
    parser.add_argument("cases", nargs="*", metavar="CASE", help=f"default: mni_affine_contrast t2_to_mni; of {CASES}")
    args = parser.parse_args()
    if unknown := set(args.cases) - set(CASES):
        parser.error(f"unknown cases {sorted(unknown)}")
    variant, cases = args.variant, args.cases or ["mni_affine_contrast", "t2_to_mni"]
    prov = provenance.collect()
    import jax.numpy as jnp

    from ilex.registration.methods import optimize as method
    from ilex.registration.pipeline import register, resample

    options, overrides = {}, {}  # the method's, and optimise_velocity's
    for part in variant.split(","):
        key, _, value = part.partition("=")
        if key == "bins":
            overrides["bins"] = int(value)
        elif key == "hyper":
            options["hyper"] = float(value)
        elif key == "mom":
            overrides["momentum"] = float(value)
        elif key != "base":
            raise SystemExit(f"unknown setting {key!r}")
    method.optimise_velocity = functools.partial(method.optimise_velocity, **overrides)
    data = os.path.join(os.path.dirname(HERE), "tests", ".data")
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for case in cases:
            spec = prepare(case, data, work, amplitude=8.0, seed=0)
            start = time.perf_counter()
            result = register(spec["moving"], spec["fixed"], method=method.OptimizeMethod(**options), extent=256)
            labels, _ = load(spec["moving_labels"])
            warped = resample(jnp.asarray(labels), jnp.asarray(result.forward_vox), "nearest", jnp.float32(0))
            out = os.path.join(work, case)
            np.save(out + "_labels.npy", np.asarray(warped).astype(np.int16))
            np.save(out + "_warp.npy", np.asarray(result.forward, np.float32))
            scores = {k: round(v, 4) for k, v in score(spec, out).items() if isinstance(v, float)}
            results[case] = scores | {"seconds": round(time.perf_counter() - start, 1)}
    print(variant, json.dumps({"cases": results, "provenance": provenance.finish(prov)}), flush=True)


if __name__ == "__main__":
    main()
