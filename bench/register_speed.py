"""Speed and memory of the full-width SynthMorph network and of the whole `register` pipeline.

Builds the full-width model (all widths 256) with random weights itself (nothing is downloaded;
random weights time the same arithmetic as the real ones, and the outputs are not a
registration). Each measurement runs in a fresh child process, so that its peak RSS is its own:

* `network`:  both symmetric U-Net passes at half resolution plus scaling and squaring of ±v
  (what the TensorFlow reference figures in issue 4 time), compiled ahead of time so that
  compilation and execution are reported apart;
* `register`: the whole pipeline on a real pair (Colin27 onto MNI152 2009a when fetched by
  `python -m tests.data --fetch`, else two synthetic heads), with the time of every stage.

Effective GFLOP/s counts convolution FLOPs as SPEC §6 does: voxels x 27 x cin x cout x 2 per
convolution, two passes. Prints a table and writes JSON (machine, versions, every figure, and the
run's provenance: commit, dirty flag, command, load; bench/provenance.py).

    python bench/register_speed.py --extents 96 128 160 192 256 --json bench/results/cpu.json
    python bench/register_speed.py --extents 256 --what affine register --model joint \
        --json bench/results/cpu_joint.json

`--what affine` times the affine detector (FreeSurfer's widths) alone, compiled; `--model joint`
makes `register` run joint (detector, mid-space, deformable) instead of deform.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

FULL = {"enc_nf": [256] * 4, "dec_nf": [256] * 4, "add_nf": [256] * 4, "flow_nf": 3, "src_feats": 1, "trg_feats": 1}
TF_REFERENCE = {96: (14.3, 5.1), 128: (33.3, 5.7), 160: (63.0, 7.2), 192: (101.7, 10.7), 256: (233.7, 15.4)}  # s, GB


def conv_flops(extent: int, widths: dict = FULL) -> int:
    """FLOPs of the convolutions of two U-Net passes at extent E (network at E/2), as SPEC §6 counts."""
    from ilex.models.synthmorph_deform.unet import conv_channels

    pairs = conv_channels(
        widths["enc_nf"],
        widths["dec_nf"],
        widths["add_nf"],
        widths["flow_nf"],
        widths["src_feats"] + widths["trg_feats"],
    )
    n = len(widths["enc_nf"])
    half = extent // 2
    sides = [half >> i for i in range(n)] + [half >> (n - j) for j in range(n)] + [half] * (len(pairs) - 2 * n)
    return 2 * sum(side**3 * 27 * cin * cout * 2 for side, (cin, cout) in zip(sides, pairs, strict=False))


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _device_peak_gb() -> float | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 1e9


def _model(gpu: bool):
    """The full-width fixed-λ U-Net with random weights, drawn as its constructor draws them (normal /
    sqrt(27 cin), zero biases), by numpy in 0.5 s: jax.random took 3.4 s of `load` for these 26.6 M
    weights, a cost no user pays (real weights are read from files)."""
    import jax
    import numpy as np

    from ilex.models.synthmorph_deform.unet import SynthMorphUNet, conv_channels

    rng = np.random.default_rng(0)
    pairs = conv_channels(
        FULL["enc_nf"], FULL["dec_nf"], FULL["add_nf"], FULL["flow_nf"], FULL["src_feats"] + FULL["trg_feats"]
    )
    kernels = [
        rng.standard_normal((3, 3, 3, cin, cout), np.float32) / np.float32(np.sqrt(27.0 * cin)) for cin, cout in pairs
    ]
    biases = [np.zeros(cout, np.float32) for _, cout in pairs]
    return SynthMorphUNet(**FULL, hyper=0.5, key=jax.random.key(0), kernels=kernels, biases=biases)


def _affine_model():
    """FreeSurfer's detector widths (synthmorph.affine.2.h5: 4 x 256 encoder, 4 x 256 added, 64 features),
    random weights drawn by numpy as the constructor draws them (Glorot uniform kernels, zero biases;
    1.9 s with jax.random, 0.17 s so); the feature head's bias is raised so that no feature map is
    empty (a fit needs them)."""
    import jax.numpy as jnp
    import numpy as np

    from ilex.models.params import fill_parameters, parameter_names, template
    from ilex.models.synthmorph_affine import SynthMorphAffine

    skeleton = template(SynthMorphAffine, {})
    rng = np.random.default_rng(2)
    arrays = []
    for name, shape in parameter_names(skeleton):
        if name.endswith("kernel"):
            limit = np.sqrt(6.0 / (27 * (shape[3] + shape[4])))  # Keras' Glorot uniform
            arrays.append(rng.uniform(-limit, limit, shape).astype(np.float32))
        else:
            arrays.append(np.zeros(shape, np.float32))
    arrays[-1] += np.float32(0.1)  # the feature head's bias
    return fill_parameters(skeleton, [jnp.asarray(a) for a in arrays])


def _network_fields(unet, mov, fix, steps: int, algorithm: str, batched: bool):
    """What the TensorFlow figures time: both passes, then scaling and squaring of ±v to full resolution."""
    from ilex.models.synthmorph_deform.velocity import half_resolution, symmetric_velocity
    from ilex.transforms.compose import upsample_half_field
    from ilex.transforms.integrate import scaling_and_squaring

    v = symmetric_velocity(
        unet, half_resolution(mov[..., None]), half_resolution(fix[..., None]), algorithm=algorithm, batched=batched
    )
    return upsample_half_field(scaling_and_squaring(v, steps)), upsample_half_field(scaling_and_squaring(-v, steps))


def child_affine(extent: int, gpu: bool, algorithm: str, batched: bool) -> dict:
    """The affine detector alone: features of both half-resolution images and the fit."""
    import jax
    import jax.numpy as jnp

    from ilex.models.synthmorph_deform.velocity import half_resolution

    t0 = time.perf_counter()
    model = _affine_model()
    jax.block_until_ready(model)
    build = time.perf_counter() - t0
    keys = jax.random.split(jax.random.key(1), 2)
    mov, fix = (half_resolution(jax.random.uniform(k, (extent,) * 3 + (1,), jnp.float32)) for k in keys)
    t0 = time.perf_counter()
    model.fit(mov, fix, extent, algorithm=algorithm)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.fit(fix, mov, extent, algorithm=algorithm)
    return {"build_s": build, "affine_first_s": first, "affine_s": time.perf_counter() - t0}


def child_network(extent: int, gpu: bool, algorithm: str, batched: bool) -> dict:
    import jax
    import jax.numpy as jnp

    _network = jax.jit(_network_fields, static_argnames=("steps", "algorithm", "batched"))

    t0 = time.perf_counter()
    unet = _model(gpu)
    jax.block_until_ready(unet)
    build = time.perf_counter() - t0
    keys = jax.random.split(jax.random.key(1), 2)
    mov, fix = (jax.random.uniform(k, (extent,) * 3, jnp.float32) for k in keys)
    t0 = time.perf_counter()
    compiled = _network.lower(unet, mov, fix, steps=7, algorithm=algorithm, batched=batched).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(unet, mov, fix))
    run_s = time.perf_counter() - t0
    out = {
        "build_s": build,
        "compile_s": compile_s,
        "network_s": run_s,
        "gflops_per_s": conv_flops(extent) / run_s / 1e9,
    }
    if extent <= 128:  # a warm second pair, where it costs little to measure
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(unet, fix, mov))
        out["network_warm_s"] = time.perf_counter() - t0
    return out


def child_accuracy(extent: int, gpu: bool, algorithm: str, batched: bool) -> dict:
    """Error of `algorithm` against XLA's direct float32 convolution on the same inputs: the
    velocity of both passes (the network's output) and the forward warp at half resolution."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ilex.models.synthmorph_deform.velocity import half_resolution, symmetric_velocity
    from ilex.transforms.integrate import scaling_and_squaring

    unet = _model(gpu)
    keys = jax.random.split(jax.random.key(1), 2)
    # Smooth random images (noise blurred by a 2x2x2 box, three times): like MRI, unlike white noise.
    mov, fix = (jax.random.uniform(k, (extent,) * 3 + (1,), jnp.float32) for k in keys)
    for _ in range(3):
        mov, fix = ((a + jnp.roll(a, 1, 0) + jnp.roll(a, 1, 1) + jnp.roll(a, 1, 2)) / 4 for a in (mov, fix))

    @jax.jit(static_argnames="algorithm")
    def fields(unet, mov, fix, algorithm):
        v = symmetric_velocity(unet, half_resolution(mov), half_resolution(fix), algorithm=algorithm, batched=batched)
        return v, scaling_and_squaring(v, 7)

    v, fw = (np.asarray(a) for a in fields(unet, mov, fix, algorithm))
    v_ref, fw_ref = (np.asarray(a) for a in fields(unet, mov, fix, "direct"))
    return {
        "velocity_max_rel": float(np.abs(v - v_ref).max() / np.abs(v_ref).max()),
        "velocity_max_abs_vox": float(np.abs(v - v_ref).max()),
        "warp_max_abs_vox": float(np.abs(fw - fw_ref).max()),
        "velocity_max_ref_vox": float(np.abs(v_ref).max()),
    }


def _pair(extent: int):
    import numpy as np

    from ilex.image.io import Image, load_image

    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", ".data")
    moving, fixed = (os.path.join(here, n) for n in ("colin27_t1.nii.gz", "mni2009a_t1.nii.gz"))
    if os.path.exists(moving) and os.path.exists(fixed):
        return load_image(moving), load_image(fixed), "Colin27 -> MNI152 2009a"
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 192)] * 3, indexing="ij"))
    heads = [((grid**2).sum(0) < 0.7) * (100 + rng.normal(0, 5, grid.shape[1:])) for _ in range(2)]
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = -96
    return Image(heads[0].astype("f4"), affine), Image(heads[1].astype("f4"), affine), "synthetic 192^3 heads"


def child_register(extent: int, gpu: bool, algorithm: str, batched: bool, model: str = "deform") -> dict:
    from ilex.progress import Stages
    from ilex.registration.pipeline import register

    stages = Stages()
    with stages("load", "images and weights"):
        moving, fixed, pair = _pair(extent)
        nets = {
            "deform": lambda: _model(gpu),
            "affine": _affine_model,
            "joint": lambda: (_affine_model(), _model(gpu)),
        }[model]()
    # None: each network's own default (the U-Net's and the detector's differ on CPU).
    result = register(moving, fixed, nets, method=model, extent=extent, stages=stages, algorithm=algorithm)
    with stages("moved", "moving image on the fixed grid"):
        result.moved()
    out = {f"{k}_s": v for k, v in stages.times.items()}
    out["total_s"] = sum(stages.times.values())
    out["pair"] = pair
    return out


def machine() -> dict:
    import jax

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extents", type=int, nargs="+", default=[96, 128, 160, 192, 256])
    parser.add_argument(
        "--what",
        nargs="+",
        choices=["network", "register", "accuracy", "affine"],
        default=["network", "register"],
        help="accuracy: error against the direct float32 convolution (slow: runs both)",
    )
    parser.add_argument("--gpu", action="store_true", help="run on the GPU (default CPU)")
    parser.add_argument(
        "--algorithm",
        choices=["direct", "winograd", "winograd4"],
        help="convolution of both networks (default: ilex's choice for the device and network)",
    )
    parser.add_argument(
        "--batched", action="store_true", help="run the two passes as one batch (default: one after the other)"
    )
    parser.add_argument(
        "--model",
        choices=["deform", "joint", "affine"],
        default="deform",
        help="what `register` runs (default deform; joint adds the affine detector and the mid-space)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    parser.add_argument("--child", nargs=2, metavar=("WHAT", "EXTENT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.gpu:
        os.environ["JAX_PLATFORMS"] = "cpu"
    if args.child:
        from ilex.registration.methods.synthmorph import default_algorithm, default_detector_algorithm

        what, extent = args.child[0], int(args.child[1])
        algorithm = args.algorithm
        if what == "affine":
            algorithm = algorithm or default_detector_algorithm()
        elif what != "register":  # register leaves the choice to each network
            algorithm = algorithm or default_algorithm()
        child = {
            "network": child_network,
            "register": child_register,
            "accuracy": child_accuracy,
            "affine": child_affine,
        }[what]
        result = child(
            extent, args.gpu, algorithm, args.batched, **({"model": args.model} if what == "register" else {})
        )
        default = f"default (U-Net {default_algorithm()}, detector {default_detector_algorithm()})"
        result["algorithm"], result["batched"] = algorithm or default, args.batched
        result["peak_rss_gb"] = _peak_rss_gb()
        result["peak_device_gb"] = _device_peak_gb() if args.gpu else None
        print(json.dumps(result))
        return 0
    import provenance

    prov = provenance.collect()
    rows = []
    for extent in args.extents:
        row = {"extent": extent, "tflop": conv_flops(extent) / 1e12}
        for what in args.what:
            cmd = [sys.executable, __file__, "--child", what, str(extent)] + (["--gpu"] if args.gpu else [])
            cmd += (["--algorithm", args.algorithm] if args.algorithm else []) + (["--batched"] if args.batched else [])
            cmd += ["--model", args.model]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                row[what] = {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
            else:
                row[what] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"  extent {extent} {what}: {row[what]}", file=sys.stderr, flush=True)
        rows.append(row)
    report = {
        "provenance": provenance.finish(prov),
        "machine": machine(),
        "model": "full width (all 256), random weights, fixed λ=0.5 U-Net",
        "register_model": args.model,
        "algorithm": args.algorithm or "default",
        "batched": args.batched,
        "results": rows,
    }
    print(
        f"{'extent':>6} {'TFLOP':>6} {'compile s':>9} {'network s':>9} {'GFLOP/s':>8} {'net RSS GB':>10} "
        f"{'register s':>10} {'reg RSS GB':>10} {'affine s':>8} {'TF s':>6} {'TF GB':>6}"
    )
    for row in rows:
        net, reg, aff = row.get("network", {}), row.get("register", {}), row.get("affine", {})
        tf = TF_REFERENCE.get(row["extent"], (float("nan"),) * 2)

        def f(d, k, fmt="{:.1f}"):
            return fmt.format(d[k]) if k in d else "-"

        print(
            f"{row['extent']:>6} {row['tflop']:>6.1f} {f(net, 'compile_s'):>9} {f(net, 'network_s'):>9} "
            f"{f(net, 'gflops_per_s', '{:.0f}'):>8} {f(net, 'peak_rss_gb'):>10} {f(reg, 'total_s'):>10} "
            f"{f(reg, 'peak_rss_gb'):>10} {f(aff, 'affine_s'):>8} {tf[0]:>6.1f} {tf[1]:>6.1f}"
        )
    print(f"machine: {report['machine']}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
