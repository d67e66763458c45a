"""`-m optimize` beside ANTs SyN (antspyx) on real anatomy with labels, in one run.

Cases (images from `python -m tests.data --fetch`, or `--data DIR`):

* `spm_to_mni`, `mni_to_spm`: SPM's avg152T1 and MNI152 2009a, both directions; Dice of grey
  and white matter (SPM's OldSeg priors on the avg152 grid, nilearn's 2009a maps; > 0.5).
* `known_warp`: Colin27 onto itself deformed by a random smooth diffeomorphism (the
  exponential of a Gaussian-smoothed random velocity, at most `--amplitude` mm); Dice over the
  116 AAL regions deformed the same way, and the error of the recovered warp (mm) in the head.
* `t2_to_mni`: SPM's avg152T2 onto MNI152 2009a (T1), a cross-contrast pair; grey/white Dice.

Every registration runs in a fresh child process, which reports its own wall time (images
read, registered, labels warped) and peak RSS at that point. Folding is the share of fixed voxels where the
full warp's Jacobian determinant is <= 0. ANTs runs `SyN` (its default: affine then SyN with
MI, 40 x 20 x 0 iterations at 4, 2, 1 mm) and, within `--syncc-timeout` seconds, `SyNCC`.
The ilex child also reports the per-stage profile (`result.transform.details`), and one extra
child times each operation of a deformable iteration at the level shapes of extent 256.

    python bench/optimize_vs_ants.py --json bench/results/optimize_vs_ants.json
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CASES = ("spm_to_mni", "mni_to_spm", "known_warp", "t2_to_mni")


def _load(path):
    import nibabel as nib

    img = nib.load(path)
    return np.asarray(img.dataobj, np.float32), img.affine


def _save(path, data, affine):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)


def _tissue_labels(grey, white, out, data):
    # Hard labels from probability maps: 1 grey, 2 white where their probability exceeds 0.5.
    g, affine = _load(os.path.join(data, grey))
    w, _ = _load(os.path.join(data, white))
    scale = 255.0 if g.max() > 1.5 else 1.0
    labels = np.zeros(g.shape, np.int16)
    labels[g / scale > 0.5] = 1
    labels[w / scale > 0.5] = 2
    _save(out, labels, affine)


def prepare(case: str, data: str, work: str, amplitude: float, seed: int) -> dict:
    """Paths of moving, fixed, moving labels, fixed labels (+ the true warp) for `case`."""
    p = lambda name: os.path.join(data, name)
    w = lambda name: os.path.join(work, name)
    if case in ("spm_to_mni", "mni_to_spm", "t2_to_mni"):
        _tissue_labels("spm_grey.nii", "spm_white.nii", w("spm_labels.nii.gz"), data)
        _tissue_labels("mni2009a_gm.nii.gz", "mni2009a_wm.nii.gz", w("mni_labels.nii.gz"), data)
        spm = (p("spm_avg152t2.nii") if case == "t2_to_mni" else p("spm_avg152t1.nii"), w("spm_labels.nii.gz"))
        mni = (p("mni2009a_t1.nii.gz"), w("mni_labels.nii.gz"))
        mov, fix = (mni, spm) if case == "mni_to_spm" else (spm, mni)
        return {"moving": mov[0], "fixed": fix[0], "moving_labels": mov[1], "fixed_labels": fix[1], "labels": "tissue"}
    if case == "known_warp":
        import jax.numpy as jnp
        from scipy.ndimage import gaussian_filter, map_coordinates

        from ilex.transforms.integrate import scaling_and_squaring

        t1, affine = _load(p("colin27_t1.nii.gz"))
        aal, _ = _load(p("colin27_aal.nii.gz"))
        rng = np.random.default_rng(seed)
        v = np.stack([gaussian_filter(rng.standard_normal(t1.shape), 8.0) for _ in range(3)], -1)
        v *= amplitude / np.abs(v).max()
        disp = np.asarray(scaling_and_squaring(jnp.asarray(v, jnp.float32), 7))  # voxels; a diffeomorphism
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in t1.shape], indexing="ij"), 0).astype(np.float32)
        coords = grid + np.moveaxis(disp, -1, 0)
        _save(w("colin_warped.nii.gz"), map_coordinates(t1, coords, order=1), affine)
        _save(w("aal_warped.nii.gz"), map_coordinates(aal, coords, order=0).astype(np.int16), affine)
        true_ras = disp @ affine[:3, :3].T.astype(np.float32)  # fixed voxel p samples moving at p + disp
        np.save(w("true_warp.npy"), true_ras)
        return {
            "moving": p("colin27_t1.nii.gz"),
            "fixed": w("colin_warped.nii.gz"),
            "moving_labels": p("colin27_aal.nii.gz"),
            "fixed_labels": w("aal_warped.nii.gz"),
            "labels": "aal",
            "true_warp": w("true_warp.npy"),
        }
    raise ValueError(case)


# -- children: one registration each -----------------------------------------------------------------


def _peak_rss_gb() -> float:
    # Taken when the registration and the label warping end, before the scoring's own arrays.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_ilex(spec: dict, out: str, cache: str | None = None) -> dict:
    if cache:
        from ilex.compilation_cache import enable_compilation_cache

        enable_compilation_cache(cache)
    from ilex.registration.methods import OptimizeMethod
    from ilex.registration.pipeline import _resample, register
    from ilex.transforms.jacobian import folding_fraction, jacobian_determinant

    start = time.perf_counter()
    method = OptimizeMethod(similarity=spec.get("similarity", "auto"))
    result = register(spec["moving"], spec["fixed"], method=method, extent=256)
    labels, _ = _load(spec["moving_labels"])
    import jax.numpy as jnp

    warped = np.asarray(_resample(jnp.asarray(labels), jnp.asarray(result.forward_vox), "nearest", jnp.float32(0)))
    seconds, rss = time.perf_counter() - start, _peak_rss_gb()
    np.save(out + "_labels.npy", warped.astype(np.int16))
    np.save(out + "_warp.npy", result.forward)
    fold = folding_fraction(jacobian_determinant(result.forward, result.fixed.affine))
    return {
        "seconds": seconds,
        "peak_rss_gb": rss,
        "stages": result.times,
        "profile": result.transform.details["profile"],
        "similarity": result.transform.details["similarity"],
        "folding_percent": 100 * fold,
    }


def run_ants(spec: dict, out: str, transform: str) -> dict:
    import ants

    start = time.perf_counter()
    fixed, moving = ants.image_read(spec["fixed"]), ants.image_read(spec["moving"])
    reg = ants.registration(fixed, moving, type_of_transform=transform)
    labels = ants.image_read(spec["moving_labels"])
    warped = ants.apply_transforms(fixed, labels, reg["fwdtransforms"], interpolator="nearestNeighbor")
    seconds, rss = time.perf_counter() - start, _peak_rss_gb()
    np.save(out + "_labels.npy", warped.numpy().astype(np.int16))
    # The full warp (affine and SyN): moving's physical coordinates, resampled onto the fixed grid.
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in moving.shape], indexing="ij"), -1).astype(np.float64)
    direction, spacing, origin = np.asarray(moving.direction), np.asarray(moving.spacing), np.asarray(moving.origin)
    phys = idx * spacing @ direction.T + origin
    mapped = [
        ants.apply_transforms(fixed, moving.new_image_like(phys[..., d]), reg["fwdtransforms"]).numpy()
        for d in range(3)
    ]
    fidx = np.stack(np.meshgrid(*[np.arange(s) for s in fixed.shape], indexing="ij"), -1).astype(np.float64)
    fphys = fidx * np.asarray(fixed.spacing) @ np.asarray(fixed.direction).T + np.asarray(fixed.origin)
    disp_lps = np.stack(mapped, -1) - fphys
    disp_ras = (disp_lps * np.array([-1.0, -1.0, 1.0])).astype(np.float32)
    np.save(out + "_warp.npy", disp_ras)
    # Folding from ANTs' own Jacobian of its SyN field (the affine's determinant is positive):
    # the resampled coordinates above are 0 outside the moving image's field of view, so their
    # finite differences would count the field of view's edge as folding.
    warp = next(t for t in reg["fwdtransforms"] if t.endswith(".nii.gz"))
    det = ants.create_jacobian_determinant_image(fixed, warp).numpy()
    return {"seconds": seconds, "peak_rss_gb": rss, "folding_percent": 100 * float(np.mean(det <= 0))}


def profile_operations(extent: int = 256, velocity_scale: int = 4, repeats: int = 3) -> dict:
    """Seconds per call of each operation of one deformable iteration, at each level's shape
    (random images: the arithmetic does not depend on the values), and of the whole step."""
    import jax
    import jax.numpy as jnp

    from ilex.optimize.deformable import (
        _deformable_step,
        _optimizer,
        level_displacement,
        moved_image,
        spatial_gradient,
        to_velocity_grid,
    )
    from ilex.optimize.similarity import similarity_function
    from ilex.optimize.smoothing import gaussian_matrices, smooth
    from ilex.transforms.integrate import voxel_grid

    def timed(fn, *args):
        jitted = jax.jit(fn)
        t0 = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = jitted(*args)
        jax.block_until_ready(out)
        return {"seconds": (time.perf_counter() - t0) / repeats, "first_call_seconds": first}, out

    out = {}
    rng = np.random.default_rng(0)
    nv = extent // velocity_scale
    v = jnp.asarray(rng.normal(0, 0.5, (nv, nv, nv, 3)).astype(np.float32))
    grid_v = voxel_grid((nv,) * 3)
    mats = tuple(jnp.asarray(m) for m in gaussian_matrices((nv,) * 3, 1.5))
    for scale in (4, 2, 1):
        n, factor = extent // scale, velocity_scale // scale
        fix = jnp.asarray(rng.random((n, n, n)).astype(np.float32))
        mov = jnp.asarray(rng.random((n, n, n)).astype(np.float32))
        grid, eye = voxel_grid((n,) * 3), jnp.eye(4)
        ops = {}
        ops["exp(v) + upsampling"], disp = timed(
            lambda v, g, factor=factor, n=n: level_displacement(v, g, factor, 5, (n,) * 3), v, grid_v
        )
        ops["warp moving image"], warped = timed(moved_image, mov, eye, grid, disp)
        ops["LNCC + gradient"], _ = timed(similarity_function("lncc"), fix, warped)
        ops["MI + gradient"], (_, dsim) = timed(similarity_function("mi"), fix, warped)
        ops["image gradient"], grad = timed(spatial_gradient, warped)

        ops["force to velocity grid"], force = timed(
            lambda f, factor=factor: to_velocity_grid(f, factor, (nv,) * 3), dsim[..., None] * grad
        )
        ops["Gaussian smoothing (velocity grid)"], _ = timed(smooth, force, mats)
        for similarity in ("lncc", "mi"):
            state = _optimizer(0.5).init(v)
            args = {"similarity": similarity, "radius": 2, "factor": factor, "steps": 5, "momentum": 0.5}
            t0 = time.perf_counter()
            r = _deformable_step(
                v + 0, state, fix, mov, eye, grid, grid_v, mats, mats, jnp.float32(0.5), jnp.float32(0.0), **args
            )
            jax.block_until_ready(r)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(repeats):
                r = _deformable_step(
                    r[0], r[1], fix, mov, eye, grid, grid_v, mats, mats, jnp.float32(0.5), jnp.float32(0.0), **args
                )
            jax.block_until_ready(r)
            ops[f"whole step ({similarity})"] = {
                "seconds": (time.perf_counter() - t0) / repeats,
                "first_call_seconds (compile)": first,
            }
        out[f"{scale} mm ({n}^3 images, {nv}^3 velocity)"] = ops
    return out


def child(argv) -> None:
    spec = json.loads(argv[1])
    if argv[0] == "profile":
        result = profile_operations()
    elif argv[0] == "ilex":
        result = run_ilex(spec, spec["out"])
    elif argv[0] == "ilex-cached":
        result = run_ilex(spec, spec["out"], spec["cache"])
    else:
        result = run_ants(spec, spec["out"], argv[0])
    result.setdefault("peak_rss_gb", _peak_rss_gb())
    print("RESULT " + json.dumps(result))


# -- the parent: cases, children, scores -----------------------------------------------------------------


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    s = x.sum() + y.sum()
    return float(2 * (x & y).sum() / s) if s else float("nan")


def score(spec: dict, out: str) -> dict:
    warped = np.load(out + "_labels.npy")
    fixed, _ = _load(spec["fixed_labels"])
    fixed = np.rint(fixed).astype(np.int16)
    if spec["labels"] == "tissue":
        d = {"dice_gm": dice(warped, fixed, 1), "dice_wm": dice(warped, fixed, 2)}
        d["dice_mean"] = (d["dice_gm"] + d["dice_wm"]) / 2
        return d
    labels = [int(x) for x in np.unique(fixed) if x > 0]
    per = [dice(warped, fixed, label) for label in labels]
    d = {"dice_mean": float(np.nanmean(per)), "regions": len(labels)}
    if "true_warp" in spec:
        truth = np.load(spec["true_warp"])
        est = np.load(out + "_warp.npy")
        t1, _ = _load(spec["fixed"])
        head = t1 > 0.1 * t1.max()
        err = np.linalg.norm(est - truth, axis=-1)[head]
        d.update(
            warp_error_mean_mm=float(err.mean()),
            warp_error_p95_mm=float(np.percentile(err, 95)),
            true_warp_mean_mm=float(np.linalg.norm(truth, axis=-1)[head].mean()),
        )
    return d


def spawn(tool: str, spec: dict, timeout: float | None) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", tool, json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    result = json.loads(line[7:])
    result["process_seconds"] = wall
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "tests", ".data"))
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument(
        "--tools",
        nargs="+",
        default=["ilex", "ilex-cached", "SyN", "SyNCC"],
        help="ilex-cached: with JAX's persistent compilation cache, warmed by one unscored run first",
    )
    ap.add_argument("--syncc-timeout", type=float, default=600.0)
    ap.add_argument("--syncc-cases", nargs="+", default=["known_warp"], help="cases where SyNCC is tried")
    ap.add_argument("--amplitude", type=float, default=8.0, help="largest displacement of the known warp, mm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "optimize_vs_ants.json"))
    args = ap.parse_args()

    import jax

    report = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "load_average_at_start": os.getloadavg(),
        },
        "cases": {},
    }
    try:
        import ants

        report["machine"]["antspyx"] = ants.__version__
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as work:
        cache = os.path.join(work, "jax-cache")
        if "ilex-cached" in args.tools:
            spec = prepare(args.cases[0], args.data, work, args.amplitude, args.seed)
            warm = spawn("ilex-cached", dict(spec, out=os.path.join(work, "warmup"), cache=cache), None)
            report["cache_warmup"] = {"case": args.cases[0], "seconds": warm.get("seconds"), "error": warm.get("error")}
            print("warm-up of the compilation cache:", report["cache_warmup"], flush=True)
        for case in args.cases:
            spec = prepare(case, args.data, work, args.amplitude, args.seed)
            rows = {}
            for tool in args.tools:
                if tool == "SyNCC" and case not in args.syncc_cases:
                    continue
                out = os.path.join(work, f"{case}_{tool}")
                timeout = args.syncc_timeout if tool == "SyNCC" else None
                r = spawn(tool, dict(spec, out=out, cache=cache), timeout)
                if "error" not in r:
                    r.update(score(spec, out))
                rows[tool] = r
                print(
                    case,
                    tool,
                    {
                        k: (round(v, 4) if isinstance(v, float) else v)
                        for k, v in r.items()
                        if k not in ("profile", "stages")
                    },
                    flush=True,
                )
            for name in ("ilex", "ilex-cached"):
                if "seconds" in rows.get(name, {}) and "seconds" in rows.get("SyN", {}):
                    rows[f"speedup_vs_SyN ({name})"] = rows["SyN"]["seconds"] / rows[name]["seconds"]
            report["cases"][case] = rows
            _write(args.json, report)  # after every case, so that a cut-short run still leaves its numbers
        if not args.no_profile:
            report["operation_profile"] = spawn("profile", {}, None)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    _write(args.json, report)
    print_table(report)


def _write(path: str, report: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)


def print_table(report: dict) -> None:
    print(f"\n{'case':<12} {'tool':<11} {'Dice':>6} {'GM':>6} {'WM':>6} {'err mm':>7} {'fold %':>7} {'s':>7} {'GB':>6}")
    for case, rows in report["cases"].items():
        for tool, r in rows.items():
            if not isinstance(r, dict):
                continue
            if "error" in r:
                print(f"{case:<12} {tool:<11} {r['error'][:60]}")
                continue
            f = lambda k, fmt, r=r: format(r[k], fmt) if k in r else "-"
            print(
                f"{case:<12} {tool:<11} {f('dice_mean', '6.3f')} {f('dice_gm', '6.3f')} {f('dice_wm', '6.3f')} "
                f"{f('warp_error_mean_mm', '7.2f')} {f('folding_percent', '7.3f')} {f('seconds', '7.1f')} {f('peak_rss_gb', '6.2f')}"
            )
        for key, value in rows.items():
            if key.startswith("speedup"):
                print(f"{'':<12} {key}: {value:.1f}x")


if __name__ == "__main__":
    main()
