"""One SynthMorph deformable (HyperMorph) training step in voxelmorph's TensorFlow: the reference side of
bench/train_vs_voxelmorph.py (issue 31, "Speed, side by side in one run").

Runs only inside the throw-away environment of bench/reference/build_tf_env.sh (TensorFlow 2.13.1, voxelmorph
@ca28315, neurite @95b2b56); nothing in ilex or its tests imports it.

The graph is the one voxelmorph's scripts/tf/train_synthmorph.py @ca28315 trains, with the registration network
replaced by the model mri_synthmorph runs for `-m deform` and the loss made HyperMorph's
(scripts/tf/train_hypermorph.py @ca28315):

* two `neurite.models.labels_to_image` generators (ids 10 and 11: the id only names layers) with
  train_synthmorph.py's defaults (warp_std 0.5, warp_res [16], blur_std 1, bias_std 0.3, bias_res [40],
  gamma_std 0.25, one-hot output of all K labels) turn two integer label maps into two images and their
  (warped) one-hot maps;
* `vxm.networks.HyperVxmJoint(input_model=..., bidir=True, mid_space=True, int_steps=STEPS, skip_affine=True,
  enc_nf, dec_nf, add_nf)`, hyp_units left at the default 4 x 32, fed (λ, image 1, image 2) through
  `input_model` (what `in_shape=(E,)*3` builds when no input model is given);
* the total full-resolution warp tot_1 (first output) moves the one-hot source map with
  `vxm.layers.SpatialTransformer(interp_method='linear')`, as train_synthmorph.py moves map_1 with pos_flow;
* loss = mean over the batch of (1-λ)·MSE(moved one-hot source, one-hot target) + λ·Grad('l2')(tot_1), λ per
  sample from U(0,1) with 20 % of samples at 0 or 1 (train_hypermorph.py's --oversample-rate 0.2), given as
  the hypernetwork input; attached with `model.add_loss`, compiled with Adam(1e-4) as train_synthmorph.py;
* one step = `model.train_on_batch(inputs)`, which runs the compiled Keras train_function (a tf.function),
  the same per-step function `model.fit` runs in the reference script.

Label maps: "shapes"-like, made here with numpy before timing (K smooth noise volumes drawn at 1/8 resolution,
upsampled linearly, argmax), a pool of 2·B maps from which each step draws its pairs; drawing them is not timed.

    /tmp/tfref/bin/python bench/reference/voxelmorph_train_step.py --extent 64 --widths 16 --batch-size 1 \\
        --labels 8 --steps 5 --warmup 2 --threads 2 --out /tmp/tf_step_e64.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_widths(text: str, levels: int = 4) -> tuple[list[int], list[int], list[int]]:
    """`W` for every convolution, or a comma list enc,...,dec,...,add,... split into three equal thirds
    (ilex's SynthMorphDeform enc_nf, dec_nf, add_nf; 4 each at full width 256)."""
    vals = [int(v) for v in text.replace(" ", "").split(",") if v]
    if len(vals) == 1:
        return [vals[0]] * levels, [vals[0]] * levels, [vals[0]] * levels
    if not vals or len(vals) % 3:
        raise SystemExit(f"--widths: one integer, or 3n integers (n enc, n dec, n add), got {text!r}")
    n = len(vals) // 3
    return vals[:n], vals[n : 2 * n], vals[2 * n :]


def shapes_label_maps(rng, count: int, extent: int, labels: int, scale: int = 8):
    """Integer maps with `labels` smooth blobs: argmax over K noise volumes drawn at extent/scale."""
    import numpy as np
    from scipy import ndimage

    low = max(extent // scale, 2)
    out = np.empty((count, extent, extent, extent, 1), np.float32)
    for i in range(count):
        noise = rng.standard_normal((labels, low, low, low)).astype(np.float32)
        up = np.stack([ndimage.zoom(v, extent / low, order=1, mode="nearest") for v in noise])
        out[i, ..., 0] = np.argmax(up[:, :extent, :extent, :extent], axis=0)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--extent", type=int, default=64, help="image side E (multiple of 32 for 4 levels)")
    p.add_argument("--widths", default="16", help="one width, or enc,..,dec,..,add,.. (three equal thirds)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--labels", type=int, default=8, help="labels K in the shapes maps (one-hot depth)")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (graph tracing)")
    p.add_argument("--threads", type=int, default=2, help="TF intra- and inter-op threads")
    p.add_argument("--int-steps", type=int, default=5, help="scaling-and-squaring steps (HyperVxmJoint int_steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args(argv)

    enc_nf, dec_nf, add_nf = parse_widths(args.widths)
    if args.extent % (2 ** (len(enc_nf) + 1)):
        raise SystemExit(
            f"--extent must be a multiple of {2 ** (len(enc_nf) + 1)} (half resolution, then "
            f"{len(enc_nf)} poolings); got {args.extent}"
        )

    t_import = time.perf_counter()
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras
    import neurite as ne
    import voxelmorph as vxm

    tf.keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    E, B, K = args.extent, args.batch_size, args.labels
    t_build = time.perf_counter()

    # Generators, as scripts/tf/train_synthmorph.py @ca28315 wires them (its defaults).
    labels = list(range(K))
    gen_args = {
        "in_shape": (E,) * 3,
        "in_label_list": labels,
        "out_label_list": labels,
        "warp_std": 0.5,
        "warp_res": [16],
        "blur_std": 1,
        "bias_std": 0.3,
        "bias_res": [40],
        "gamma_std": 0.25,
    }
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # labels_to_image is "deprecated in favor of labels_to_image_new" @95b2b56
        # ids 10, 11 rather than the script's 0, 1: the id only names layers, and HyperVxmJoint's own
        # unnamed VecInt layers take the names vec_int, vec_int_1, which generator id 1 would also use.
        gen_1 = ne.models.labels_to_image(**gen_args, id=10)
        gen_2 = ne.models.labels_to_image(**gen_args, id=11)
    ima_1, map_1 = gen_1.outputs
    ima_2, map_2 = gen_2.outputs

    # Registration: SynthMorph's deformable hypernetwork (mri_synthmorph -m deform's model).
    hyp = tf.keras.Input(shape=(1,), name="hyper_lambda")
    input_model = tf.keras.Model(gen_1.inputs + gen_2.inputs + [hyp], outputs=(hyp, ima_1, ima_2))
    model = vxm.networks.HyperVxmJoint(
        input_model=input_model,
        bidir=True,
        mid_space=True,
        int_steps=args.int_steps,
        skip_affine=True,
        enc_nf=enc_nf,
        dec_nf=dec_nf,
        add_nf=add_nf,
    )
    tot_1, _tot_2 = model.outputs  # bidir=True: tot_2, the inverse, is not in the loss
    moved = vxm.layers.SpatialTransformer(interp_method="linear", name="pred")([map_1, tot_1])

    # HyperMorph loss, per sample, then the batch mean.
    lam = hyp[:, 0]
    data = tf.reduce_mean(tf.keras.backend.batch_flatten(vxm.losses.MSE().mse(map_2, moved)), axis=-1)
    smooth = vxm.losses.Grad("l2").loss(None, tot_1)
    model.add_loss(tf.reduce_mean((1.0 - lam) * data + lam * smooth))
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=1e-4))
    n_params = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    build_s = time.perf_counter() - t_build

    pool = shapes_label_maps(rng, max(2 * B, 2), E, K)

    def draw_lambda():  # train_hypermorph.py's random_hyperparam, --oversample-rate 0.2
        return float(rng.choice([0.0, 1.0])) if rng.random() < 0.2 else float(rng.random())

    def batch():
        i = rng.integers(0, len(pool), size=B)
        j = (i + rng.integers(1, len(pool), size=B)) % len(pool)  # two different maps (same_subj=False)
        lam_b = np.array([[draw_lambda()] for _ in range(B)], np.float32)
        return [pool[i], pool[j], lam_b]

    warm_s, step_s, losses = [], [], []
    for k in range(args.warmup + args.steps):
        x = batch()
        t0 = time.perf_counter()
        loss = model.train_on_batch(x)
        dt = time.perf_counter() - t0
        (warm_s if k < args.warmup else step_s).append(dt)
        losses.append(float(loss))
        print(
            f"step {k + 1}/{args.warmup + args.steps}{' (warm-up)' if k < args.warmup else ''}: "
            f"{dt:.3f} s, loss {float(loss):.5f}",
            file=sys.stderr,
            flush=True,
        )
    if not np.all(np.isfinite(losses)):
        raise SystemExit(f"non-finite loss: {losses}")

    def rev(name):
        f = os.path.join(sys.prefix, f"{name}.rev")
        return open(f).read().strip() if os.path.exists(f) else None

    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = {
        "side": "voxelmorph-tf",
        "extent": E,
        "widths": args.widths,
        "enc_nf": enc_nf,
        "dec_nf": dec_nf,
        "add_nf": add_nf,
        "hyp_units": [32] * 4,
        "int_steps": args.int_steps,
        "batch_size": B,
        "labels": K,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "seed": args.seed,
        "trainable_params": n_params,
        "step": "model.train_on_batch (Keras compiled train_function, a tf.function; what model.fit runs per step)",
        "model": (
            f"HyperVxmJoint(in_shape=({E},)*3 via input_model, bidir=True, mid_space=True, "
            f"int_steps={args.int_steps}, skip_affine=True, enc_nf={enc_nf}, dec_nf={dec_nf}, add_nf={add_nf})"
            " fed by 2 x neurite labels_to_image"
        ),
        "loss": "mean_b[(1-lam)*MSE(onehot(src) o tot_1, onehot(trg)) + lam*Grad('l2')(tot_1)], Adam(1e-4)",
        "step_seconds": step_s,
        "warmup_seconds": warm_s,
        "median_step_seconds": statistics.median(step_s) if step_s else None,
        "losses": losses,
        "build_seconds": build_s,
        "import_seconds": t_build - t_import,
        "peak_rss_bytes": int(peak_kib) * 1024,
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "voxelmorph": rev("voxelmorph") or "see bench/reference/build_tf_env.sh",
            "neurite": rev("neurite") or "see bench/reference/build_tf_env.sh",
        },
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(
        f"median step {result['median_step_seconds']:.3f} s, peak RSS {peak_kib / 2**20:.2f} GiB -> {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
