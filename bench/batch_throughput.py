"""Pairs per hour: separate `ilex register` processes vs one warm `ilex batch` vs Dask with two workers.

Builds the full-width SynthMorph U-Net (all widths 256, λ=0.5) with random weights and saves it
as a bundle (nothing is downloaded; random weights time the same arithmetic). The pairs are
Colin27 and shifted copies of it (so every pair has the same image shapes, as in a study
conformed to one template) onto MNI152 2009a, at 1 mm (tests/.data, `python -m tests.data --fetch`).

For each extent:
* `separate`: one `python -m ilex register` process per pair, compilation cache off (what a
  shell loop over `ilex register` cost before), and the same with the persistent compilation
  cache on and already filled by a first process (`separate_cached`): what the cache saves;
* `batch`: `ilex batch` over all pairs, one process (first pair loads and compiles);
* `dask`: `ilex batch --local-workers 2` (two worker processes on this machine);
* `network`: in one process, the network alone (two U-Net passes and scaling and squaring of
  ±v, compiled) against warm pairs run as `ilex batch` runs them (`iter_local`: registration,
  QC, writing -o -t, each pair's files written while the next registers), after a first pair
  that compiled: the ratio is the warm pair's overhead over the network. `--breakdown` also
  times one pair step by step, nothing overlapped.
The cache-filling process of `separate_cached` (`cache_fill_s`) is a fresh process with an
empty cache: at 256, where `separate` takes long, it stands for it.

    python bench/batch_throughput.py --extents 128 --pairs 4 --breakdown --json bench/results/batch_cpu_128.json
    python bench/batch_throughput.py --extents 256 --pairs 2 --what network separate_cached batch dask \
        --json bench/results/batch_cpu_256.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "tests", ".data")
sys.path.insert(0, HERE)


def _env(cache_dir: str | None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.path.join(ROOT, "src"))
    env.pop("ILEX_NO_COMPILATION_CACHE", None)
    if cache_dir is None:
        env["ILEX_NO_COMPILATION_CACHE"] = "1"
    else:
        env["ILEX_COMPILATION_CACHE_DIR"] = cache_dir
    return env


def make_inputs(work: str, n: int) -> tuple[str, list[tuple[str, str]]]:
    import jax
    import nibabel as nib
    from register_speed import FULL

    import ilex
    from ilex.models.synthmorph_deform.unet import SynthMorphUNet

    bundle = os.path.join(work, "full_width")
    ilex.save(SynthMorphUNet(**FULL, hyper=0.5, key=jax.random.key(0)), bundle)
    colin = nib.load(os.path.join(DATA, "colin27_t1.nii.gz"))
    pairs = []
    for k in range(n):
        affine = colin.affine.copy()
        affine[:3, 3] += [1.5 * k, -1.0 * k, 0.5 * k]
        path = os.path.join(work, f"moving{k}.nii.gz")
        nib.save(nib.Nifti1Image(colin.get_fdata(dtype="float32"), affine), path)
        pairs.append((path, os.path.join(DATA, "mni2009a_t1.nii.gz")))
    return bundle, pairs


def _csv(path: str, pairs, out: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["moving", "fixed", "o", "t"])
        for k, (m, fx) in enumerate(pairs):
            w.writerow([m, fx, os.path.join(out, f"p{k}_moved.nii.gz"), os.path.join(out, f"p{k}_fw.nii.gz")])


def _run(cmd, env) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-2000:]}")
    return time.perf_counter() - t0


def separate(bundle, pairs, extent, work, cache_dir) -> dict:
    times = []
    for k, (m, fx) in enumerate(pairs):
        out = os.path.join(work, f"sep_{extent}_{k}")
        cmd = [
            sys.executable,
            "-m",
            "ilex",
            "register",
            m,
            fx,
            "-m",
            "deform",
            "-w",
            bundle,
            "-e",
            str(extent),
            "-q",
            "-o",
            out + "_moved.nii.gz",
            "-t",
            out + "_fw.nii.gz",
        ]
        times.append(_run(cmd, _env(cache_dir)))
    return {"pair_s": times, "total_s": sum(times), "pairs_per_hour": 3600 * len(times) / sum(times)}


def batch(bundle, pairs, extent, work, extra=(), name="batch") -> dict:
    out = os.path.join(work, f"{name}_{extent}")
    os.makedirs(out, exist_ok=True)
    table = os.path.join(work, f"{name}_{extent}.csv")
    _csv(table, pairs, out)
    cmd = [sys.executable, "-m", "ilex", "batch", table, "-m", "deform", "-w", bundle, "-e", str(extent), "-q", *extra]
    total = _run(cmd, _env(None))
    with open(os.path.join(work, f"{name}_{extent}.summary.json")) as f:
        records = json.load(f)["pairs"]
    return {
        "total_s": total,
        "pairs_per_hour": 3600 * len(pairs) / total,
        "pair_s": [r["seconds"] for r in records],
        "peak_memory_gib": [r["peak_memory_gib"] for r in records],
        "status": [r["status"] for r in records],
    }


def child_network(bundle: str, extent: int, pairs_json: str, breakdown: bool) -> dict:
    """In this process: warm pairs as `ilex batch` runs them, against the network alone."""
    import jax

    from ilex.batch import BatchSettings
    from ilex.batch.local import iter_local
    from ilex.batch.pairs import Pair
    from ilex.image.io import load_image
    from ilex.progress import Stages
    from ilex.qc import quality_report
    from ilex.registration.network_space import network_space, to_network
    from ilex.registration.outputs import write_outputs
    from ilex.registration.pipeline import network_fields
    from ilex.registration.session import Registrar

    pairs = json.loads(pairs_json)
    out = tempfile.mkdtemp()
    settings = BatchSettings(weights=bundle, extent=extent)
    reg = Registrar.from_weights(bundle, extent=extent, prepare=[(None, 0.5)])
    method = reg.method_for()

    def batch_pairs(chunk, tag):
        return [
            Pair(
                k,
                m,
                fx,
                {
                    "out_moving": os.path.join(out, f"{tag}{k}_moved.nii.gz"),
                    "trans": os.path.join(out, f"{tag}{k}_fw.nii.gz"),
                },
            )
            for k, (m, fx) in enumerate(chunk)
        ]

    # The first pair compiles everything; then the others run as `ilex batch` runs them (each
    # pair's outputs written on a second thread while the next registers). The warm time per
    # pair is the whole run's, the last pair's unoverlapped writing included, over its pairs.
    t0 = time.perf_counter()
    first = list(iter_local(batch_pairs(pairs[:1], "first"), settings, reg))
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    records = list(iter_local(batch_pairs(pairs[1:], "warm"), settings, reg))
    warm_total = time.perf_counter() - t0
    assert all(r.status == "done" for r in first + records), [r.error for r in first + records]

    moving, fixed = load_image(pairs[0][0]), load_image(pairs[0][1])
    space = network_space(moving, fixed, extent)
    mov, fix = to_network(moving, space.net_to_mov, extent), to_network(fixed, space.net_to_fix, extent)
    jax.block_until_ready((mov, fix))
    network = []
    for _ in range(max(1, len(records))):
        t0 = time.perf_counter()
        fw, bw = network_fields(method.estimate(mov, fix), 7)
        jax.block_until_ready((fw, bw))
        network.append(time.perf_counter() - t0)
    del fw, bw

    stages_s = None
    if breakdown:  # one more pair, step by step and not overlapped: where a pair's time goes
        stages = Stages()
        result = reg.register(*pairs[0], stages=stages)
        with stages("ras", "forward warp in RAS mm"):
            _ = result.forward
        with stages("moved", "moving image on the fixed grid"):
            result.moved()
        with stages("qc", "Jacobian determinant, folding"):
            report = quality_report(result)
        with stages("write", "-o and -t (gzip)"):
            write_outputs(
                result,
                {"out_moving": os.path.join(out, "moved.nii.gz"), "trans": os.path.join(out, "fw.nii.gz")},
                report=report,
                settings={"hyper": 0.5, "steps": 7, "extent": extent},
            )
        stages_s = stages.times
    warm_pair = warm_total / len(records) if records else None
    return {
        "first_pair_s": first_s,
        "warm_pairs": len(records),
        "warm_total_s": warm_total,
        "warm_pair_s": warm_pair,
        "warm_pair_record_s": [r.seconds for r in records],
        "network_s": network,
        "stages_s": stages_s,
        "warm_over_network": warm_pair / (sum(network) / len(network)) if records else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extents", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--pairs", type=int, nargs="+", default=[4, 2], help="pairs per extent (one number per extent)")
    parser.add_argument("--what", nargs="+", default=["network", "separate", "separate_cached", "batch", "dask"])
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--breakdown", action="store_true", help="network: also time one pair step by step")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        os.environ["JAX_PLATFORMS"] = "cpu"
        print(json.dumps(child_network(args.child[0], int(args.child[1]), args.child[2], args.breakdown)))
        return 0
    import provenance
    from register_speed import machine

    prov = provenance.collect()
    os.environ["JAX_PLATFORMS"] = "cpu"
    work = tempfile.mkdtemp(prefix="ilex-batch-bench-")
    bundle, all_pairs = make_inputs(work, max(args.pairs))
    report = {
        "provenance": prov,
        "machine": machine(),
        "load_average_start": os.getloadavg(),
        "model": "full width (all 256), random weights, fixed λ=0.5 U-Net bundle",
        "pairs": "Colin27 (181x217x181, 1 mm) and shifted copies onto MNI152 2009a (197x233x189, 1 mm)",
        "results": [],
    }
    for extent, n in zip(args.extents, args.pairs, strict=False):
        pairs = all_pairs[:n]
        row = {"extent": extent, "pairs": n}
        for what in args.what:
            t0 = time.perf_counter()
            try:
                if what == "network":
                    env = _env(None)
                    proc = subprocess.run(
                        [
                            sys.executable,
                            __file__,
                            "--child",
                            bundle,
                            str(extent),
                            json.dumps(pairs),
                            *(["--breakdown"] if args.breakdown else []),
                        ],
                        env=env,
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    row[what] = json.loads(proc.stdout.strip().splitlines()[-1])
                elif what == "separate":
                    row[what] = separate(bundle, pairs, extent, work, None)
                elif what == "separate_cached":
                    cache = os.path.join(work, f"jax_cache_{extent}")
                    fill = separate(bundle, pairs[:1], extent, work, cache)  # the first process fills the cache
                    row[what] = separate(bundle, pairs, extent, work, cache)
                    row[what]["cache_fill_s"] = fill["total_s"]
                elif what == "batch":
                    row[what] = batch(bundle, pairs, extent, work, ("--no-compilation-cache",))
                elif what == "dask":
                    row[what] = batch(
                        bundle, pairs, extent, work, ("--no-compilation-cache", "--local-workers", "2"), "dask"
                    )
            except (RuntimeError, subprocess.CalledProcessError) as e:
                row[what] = {"error": str(e)[-1000:]}
            print(
                f"extent {extent} {what} ({time.perf_counter() - t0:.0f} s): {row[what]}", file=sys.stderr, flush=True
            )
            if args.json:  # after every measurement: a long run that is cut short keeps what it has
                report["results"] = [r for r in report["results"] if r["extent"] != extent] + [row]
                report["load_average_end"] = os.getloadavg()
                provenance.finish(prov)
                os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
                with open(args.json, "w") as f:
                    json.dump(report, f, indent=2)
        report["results"] = [r for r in report["results"] if r["extent"] != extent] + [row]
    provenance.finish(prov)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
