"""Peak memory of `ilex convert` on a full-width file (all widths 256, 4 x 32 hypernetwork).

Writes a 3.5 GB Keras-layout h5 with random values (never the real weights), converts it to
the hypernetwork bundle and to the fixed-λ bundle in child processes, and reports each child's
peak RSS and the output sizes as JSON (with the run's provenance, bench/provenance.py).

    python bench/convert_memory.py --json convert_memory.json

The h5 and the bundles go to a fresh temporary folder, removed at the end; `--workdir DIR` keeps
them in DIR instead (and reuses DIR's h5 on the next run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from ilex.convert.keras_h5 import write_keras_weights
from ilex.models.params import parameter_names, template
from ilex.models.synthmorph_deform.model import SynthMorphDeform

FULL = {
    "enc_nf": [256] * 4,
    "dec_nf": [256] * 4,
    "add_nf": [256] * 4,
    "flow_nf": 3,
    "nb_hyp_layers": 4,
    "nb_hyp_params": 1,
    "nb_hyp_units": 32,
    "src_feats": 1,
    "trg_feats": 1,
}


def write_full_width(path: str) -> None:
    rng = np.random.default_rng(0)

    def filler(shape):
        def fill(ds):
            step = max(1, (16 << 20) // max(1, int(np.prod(shape[1:]))) // 4) if len(shape) > 1 else None
            if step is None:
                ds[...] = rng.standard_normal(shape, dtype=np.float32) * 1e-3
            else:
                for s in range(0, shape[0], step):
                    rows = min(step, shape[0] - s)
                    ds[s : s + rows] = rng.standard_normal((rows, *shape[1:]), dtype=np.float32) * 1e-3

        return fill

    shapes = [s for _, s in parameter_names(template(SynthMorphDeform, FULL))]
    write_keras_weights(path, [(s, filler(s)) for s in shapes])


def child_peak(cmd: list[str]) -> tuple[float, float]:
    t = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(cmd, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the max over all children so far; run each in a fresh parent.
    return max(before, after) / 2**20, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", help="keep the h5 and bundles here (default: a temporary folder, removed)")
    ap.add_argument("--json", metavar="FILE", help="also write the results here")
    ap.add_argument("--mode", choices=["all", "one"], default="all", help=argparse.SUPPRESS)
    ap.add_argument("--hyper", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.workdir is None:
        with tempfile.TemporaryDirectory(prefix="ilex-convert-bench-") as work:
            args.workdir = work
            _run(args)
    else:
        os.makedirs(args.workdir, exist_ok=True)
        _run(args)


def _run(args: argparse.Namespace) -> None:
    h5 = os.path.join(args.workdir, "full_width_random.h5")
    if args.mode == "one":  # child: convert once, report own peak RSS
        out = os.path.join(args.workdir, "fixed" if args.hyper is not None else "hyper")
        t = time.perf_counter()
        from ilex.convert import convert

        convert(h5, out, hyper=args.hyper, overwrite=True, progress=False)
        size = os.path.getsize(os.path.join(out, "model.safetensors"))
        print(
            json.dumps(
                {
                    "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                    "seconds": time.perf_counter() - t,
                    "bundle_bytes": size,
                }
            )
        )
        return
    import provenance

    prov = provenance.collect()
    if not os.path.exists(h5):
        t = time.perf_counter()
        write_full_width(h5)
        print(f"wrote {h5} ({os.path.getsize(h5) / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    results = {
        "provenance": prov,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "h5_bytes": os.path.getsize(h5),
    }
    for label, extra in (("hyper", []), ("fixed_lambda_0.5", ["--hyper", "0.5"])):
        out = subprocess.run(
            [sys.executable, __file__, "--workdir", args.workdir, "--mode", "one", *extra],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results[label] = json.loads(out.strip().splitlines()[-1])
    provenance.finish(prov)
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
