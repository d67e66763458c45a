"""The benchmark's registration cases and their scores (bench/optimize_vs_ants.py).

Every image comes from `tests/data.py` (`python -m tests.data --fetch`); the synthetic pairs are
made here from them, with a known true warp. `prepare(case, ...)` writes what a case needs into
a work folder and returns its spec: moving, fixed, moving labels, fixed labels, the label kind,
and for a known-truth case the true warp (RAS mm on the fixed grid: fixed voxel p samples the
moving image at world `A_fix p + truth[p]`) and the head mask where its error is measured.

* `spm_to_mni`, `mni_to_spm`: SPM's avg152T1 and MNI152 2009a, both directions (avg152's 2 mm
  grid is the fixed grid of the second); grey/white Dice (SPM's OldSeg priors on the avg152 grid,
  nilearn's 2009a maps; > 0.5).
* `t2_to_mni`: SPM's avg152T2 onto MNI152 2009a (T1), a cross-contrast pair; grey/white Dice.
* `known_warp`: Colin27 onto itself deformed by a random smooth diffeomorphism (the exponential
  of a Gaussian-smoothed random velocity, at most `amplitude` mm); Dice over the 116 AAL regions
  carried the same way, and the error of the recovered warp.
* `mni_affine_contrast`: MNI152 2009a onto itself seen through a known affine (6 degrees, 5 %
  scaling, 6 mm shift) and a smooth warp, with its contrast changed to a T2-like one (CSF
  brightest, white matter darkest) and a smooth bias field; grey/white labels carried the same way.
* `aniso_1x1x3`: the `known_warp` pair with its fixed image on 3 mm axial slices (each the mean of
  three 1 mm slices, a thick-slice profile; labels taken at the slice centres).
* `half_mm`: Colin27 sampled at 0.5 mm (cubic; labels nearest) over a 96 mm cube at the centre
  of the brain, and that image (and labels) through a known smooth warp: upsampled 1 mm anatomy
  on a finer grid, not real sub-millimetre (ex-vivo) data.

Issue 34's wider set (real data at its native resolution; the known maps are world maps about the
image's centre, fixed point x -> moving point T(x + u(x)), T a turn, scaling and shift, u a smooth
diffeomorphic warp):

* `inia19_affine_contrast`: the INIA19 rhesus macaque brain (skull-stripped, real 0.5 mm) onto
  itself through a known affine (5 degrees, 4 % scaling) and a warp of at most `amplitude / 4` mm,
  its contrast made T2-like (a piecewise-linear map through the brain's intensity quantiles) with
  noise; 724 NeuroMaps labels carried the same way.
* `inia19_rotate`: INIA19 through a large turn (about 20 degrees, about an oblique axis) and a warp;
  same contrast; NeuroMaps labels.
* `inia19_resection`: INIA19 through a small affine and a warp, with a ball of 5 mm radius cut out
  of the fixed image (set to 0, as a resection cavity) and its labels; Dice and the warp's error
  are measured outside the ball and a 2 mm margin (`score_mask`).
* `mni_rotate`: MNI152 2009a (1 mm) through a turn of 22 degrees and a warp; grey/white labels.
* `mni_rotate_contrast`: MNI152 2009a through another turn of about 20 degrees and a warp, T2-like
  with a bias field as `mni_affine_contrast`; grey/white labels.
* `colin_resection`: Colin27 (whole head, 1 mm) through a small affine and a warp, a ball of 12 mm
  radius in left frontal cortex and white matter cut out of the fixed image; AAL Dice outside the
  ball and a 4 mm margin.

`HELD_OUT` names the cases that `-m optimize` must never be tuned on (they are scored in their own
rows); every other case is the tuning set.
"""

from __future__ import annotations

import os

import numpy as np

CASES = (
    "spm_to_mni",
    "mni_to_spm",
    "known_warp",
    "t2_to_mni",
    "mni_affine_contrast",
    "aniso_1x1x3",
    "half_mm",
    "inia19_affine_contrast",
    "mni_rotate",
    "colin_resection",
    "inia19_rotate",
    "inia19_resection",
    "mni_rotate_contrast",
)
# Held out, chosen on 2026-12-05 before any of issue 34's new cases ran through ilex and before any
# tuning of `-m optimize` on them: never tune on these, report them in their own rows. The rest of
# CASES is the tuning set (the seven first cases, and inia19_affine_contrast, mni_rotate and
# colin_resection).
HELD_OUT = ("inia19_rotate", "inia19_resection", "mni_rotate_contrast")
# Pairs whose two images have different contrasts: the peers use mutual information there.
CROSS_CONTRAST = ("t2_to_mni", "mni_affine_contrast", "inia19_affine_contrast", "mni_rotate_contrast")


def load(path):
    import nibabel as nib

    img = nib.load(path)
    return np.asarray(img.dataobj, np.float32), img.affine


def save(path, data, affine):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)


def _tissue_labels(grey, white, out, data):
    # Hard labels from probability maps: 1 grey, 2 white where their probability exceeds 0.5.
    g, affine = load(os.path.join(data, grey))
    w, _ = load(os.path.join(data, white))
    scale = 255.0 if g.max() > 1.5 else 1.0
    labels = np.zeros(g.shape, np.int16)
    labels[g / scale > 0.5] = 1
    labels[w / scale > 0.5] = 2
    save(out, labels, affine)


def smooth_warp(shape, amplitude: float, seed: int, sigma: float = 8.0) -> np.ndarray:
    """A random diffeomorphic displacement (voxels, (x, y, z, 3)): exp of a smoothed velocity."""
    import jax.numpy as jnp
    from scipy.ndimage import gaussian_filter

    from ilex.transforms.integrate import scaling_and_squaring

    rng = np.random.default_rng(seed)
    v = np.stack([gaussian_filter(rng.standard_normal(shape), sigma) for _ in range(3)], -1)
    v *= amplitude / np.abs(v).max()
    return np.asarray(scaling_and_squaring(jnp.asarray(v, jnp.float32), 7))


def _grid(shape) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), 0)


def _sample(volume, coords, order):
    from scipy.ndimage import map_coordinates

    return map_coordinates(volume, coords, order=order, mode="constant", cval=0.0)


def _interp_field(disp, coords):
    # The displacement (x, y, z, 3) linearly interpolated at voxel coordinates (3, ...).
    return np.stack([_sample(disp[..., d], coords, 1) for d in range(3)], -1)


def _head(image) -> np.ndarray:
    return image > 0.1 * image.max()


def _t2_like(t1, gm, wm) -> np.ndarray:
    # Piecewise-linear, non-monotone intensity map through the tissue medians: background stays 0,
    # CSF (taken at half the grey-matter level) becomes the brightest, white matter the darkest.
    g, w = float(np.median(t1[gm > 127])), float(np.median(t1[wm > 127]))
    knots = [0.0, 0.5 * g, g, w, float(t1.max())]
    values = [0.0, 1.0, 0.6, 0.3, 0.25]
    return np.interp(t1, knots, values).astype(np.float32)


def rotation(degrees) -> np.ndarray:
    """The turn by `degrees` (x, y, z) about x, then y, then z, as one 3 x 3 matrix (column vectors)."""
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _known_map(shape, affine, lin, shift, u_vox):
    """Fixed voxel p's point in the moving grid (voxels, (3, x, y, z)) under the world map
    x -> lin (x + u(x) - c) + c + shift (mm; c the grid's centre, u = `u_vox` in the grid's voxels),
    and the map's displacement y - x (mm, (x, y, z, 3)); both images share `affine`'s grid."""
    centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3]
    x = np.einsum("ij,j...->...i", affine[:3, :3], _grid(shape)) + affine[:3, 3]
    y = (x + u_vox @ affine[:3, :3].T - centre) @ np.asarray(lin).T + centre + np.asarray(shift)
    coords = np.moveaxis((y - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T, -1, 0).astype(np.float32)
    return coords, (y - x).astype(np.float32)


def _t2_like_quantiles(t1) -> np.ndarray:
    # `_t2_like` for an image without tissue maps: knots at the brain's 5th, 50th and 95th
    # intensity percentiles (partial-volume CSF, grey, white), background 0.
    q5, q50, q95 = np.percentile(t1[t1 > 0], [5, 50, 95])
    return np.interp(t1, [0.0, q5, q50, q95, float(t1.max())], [0.0, 1.0, 0.6, 0.3, 0.25]).astype(np.float32)


def _outside_ball(shape, affine, centre_mm, radius_mm) -> np.ndarray:
    x = np.einsum("ij,j...->...i", affine[:3, :3], _grid(shape)) + affine[:3, 3]
    return np.linalg.norm(x - np.asarray(centre_mm), axis=-1) >= radius_mm


# Issue 34's wider cases: image, labels ("tissue": the MNI maps), the turn (degrees about x, y, z),
# scales, shift (mm), the warp's largest displacement as a share of `amplitude` (in the image's
# voxels: a quarter of it in mm at 0.5 mm), the seed's offset, the contrast, the resection ball
# (centre mm, radius mm, margin mm).
WIDER = {
    "inia19_affine_contrast": ("inia19", (4, 0, 3), (1.04, 0.96, 1.02), (2, -1.5, 1), 0.5, 10, "t2", None),
    "inia19_rotate": ("inia19", (15, 10, 10), (1, 1, 1), (1.5, 2, -1), 0.5, 11, "same", None),
    "inia19_resection": ("inia19", (3, 0, -3), (0.98, 1.03, 1), (-1, 1, 1.5), 0.5, 12, "same", ((18, -10, 8), 5, 2)),
    "mni_rotate": ("mni", (20, 0, 10), (1, 1, 1), (5, -3, 4), 1.0, 13, "same", None),
    "mni_rotate_contrast": ("mni", (-12, 6, -15), (1.02, 1, 0.98), (-4, 3, 2), 1.0, 14, "t2", None),
    "colin_resection": ("colin", (0, 4, 0), (1, 1, 1), (3, -2, 2), 1.0, 15, "same", ((-30, 30, 25), 12, 4)),
}


def _prepare_wider(case: str, data: str, work: str, amplitude: float, seed: int, spec: dict) -> dict:
    from scipy.ndimage import gaussian_filter

    image, degrees, scales, shift, share, offset, contrast, resection = WIDER[case]
    p = lambda name: os.path.join(data, name)
    w = lambda name: os.path.join(work, f"{case}_{name}")
    if image == "inia19":
        moving, moving_labels, kind = p("inia19_t1_brain.nii.gz"), p("inia19_neuromaps.nii.gz"), "neuromaps"
    elif image == "colin":
        moving, moving_labels, kind = p("colin27_t1.nii.gz"), p("colin27_aal.nii.gz"), "aal"
    else:
        moving, moving_labels, kind = p("mni2009a_t1.nii.gz"), w("moving_labels.nii.gz"), "tissue"
        _tissue_labels("mni2009a_gm.nii.gz", "mni2009a_wm.nii.gz", moving_labels, data)
    t1, affine = load(moving)
    labels, _ = load(moving_labels)
    u_vox = smooth_warp(t1.shape, amplitude * share, seed + offset)
    coords, truth = _known_map(t1.shape, affine, rotation(degrees) @ np.diag(scales), shift, u_vox)
    fixed, fixed_labels = _sample(t1, coords, 1), _sample(labels, coords, 0).astype(np.int16)
    head = _head(fixed)
    rng = np.random.default_rng(seed + offset)
    if contrast == "t2" and image == "mni":
        gm, _ = load(p("mni2009a_gm.nii.gz"))
        wm, _ = load(p("mni2009a_wm.nii.gz"))
        bias = gaussian_filter(rng.standard_normal(t1.shape), 20.0)
        fixed = _sample(_t2_like(t1, gm, wm), coords, 1) * (1 + 0.1 * bias / np.abs(bias).max())
    elif contrast == "t2":  # noise of 3 % of the brightest tissue, inside the brain only
        fixed = _sample(_t2_like_quantiles(t1), coords, 1)
        fixed = np.where(fixed > 0, fixed + 0.03 * rng.standard_normal(t1.shape), 0)
    extra = {}
    if resection is not None:
        centre, radius, margin = resection
        kept = _outside_ball(t1.shape, affine, centre, radius)
        fixed, fixed_labels = fixed * kept, fixed_labels * kept
        keep = _outside_ball(t1.shape, affine, centre, radius + margin)
        np.save(w("score_mask.npy"), keep)
        head &= keep
        extra["score_mask"] = w("score_mask.npy")
    save(w("fixed.nii.gz"), fixed.astype(np.float32), affine)
    save(w("fixed_labels.nii.gz"), fixed_labels, affine)
    np.save(w("truth.npy"), truth)
    np.save(w("head.npy"), head)
    spec |= extra
    return spec | {
        "moving": moving,
        "fixed": w("fixed.nii.gz"),
        "moving_labels": moving_labels,
        "fixed_labels": w("fixed_labels.nii.gz"),
        "labels": kind,
        "true_warp": w("truth.npy"),
        "head_mask": w("head.npy"),
    }


def prepare(case: str, data: str, work: str, amplitude: float, seed: int) -> dict:
    """Paths of moving, fixed, moving labels, fixed labels (+ the truth) for `case`."""
    p = lambda name: os.path.join(data, name)
    w = lambda name: os.path.join(work, name)
    spec = {"case": case, "cross_contrast": case in CROSS_CONTRAST}
    if case in WIDER:
        return _prepare_wider(case, data, work, amplitude, seed, spec)
    if case in ("spm_to_mni", "mni_to_spm", "t2_to_mni"):
        _tissue_labels("spm_grey.nii", "spm_white.nii", w("spm_labels.nii.gz"), data)
        _tissue_labels("mni2009a_gm.nii.gz", "mni2009a_wm.nii.gz", w("mni_labels.nii.gz"), data)
        spm = (p("spm_avg152t2.nii") if case == "t2_to_mni" else p("spm_avg152t1.nii"), w("spm_labels.nii.gz"))
        mni = (p("mni2009a_t1.nii.gz"), w("mni_labels.nii.gz"))
        mov, fix = (mni, spm) if case == "mni_to_spm" else (spm, mni)
        return spec | {
            "moving": mov[0],
            "fixed": fix[0],
            "moving_labels": mov[1],
            "fixed_labels": fix[1],
            "labels": "tissue",
        }
    if case in ("known_warp", "aniso_1x1x3"):
        t1, affine = load(p("colin27_t1.nii.gz"))
        aal, _ = load(p("colin27_aal.nii.gz"))
        disp = smooth_warp(t1.shape, amplitude, seed)
        coords = _grid(t1.shape) + np.moveaxis(disp, -1, 0)
        fixed, labels = _sample(t1, coords, 1), _sample(aal, coords, 0).astype(np.int16)
        truth = disp @ affine[:3, :3].T.astype(np.float32)
        if case == "aniso_1x1x3":
            # Slice k covers 1 mm slices 3k..3k+2; its centre is slice 3k+1.
            n = t1.shape[2] // 3
            fixed = fixed[..., : 3 * n].reshape(*t1.shape[:2], n, 3).mean(-1)
            labels, truth = labels[..., 1 : 3 * n : 3], truth[..., 1 : 3 * n : 3, :]
            affine = affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 3, 1], [0, 0, 0, 1]], np.float64)
        save(w(f"{case}_fixed.nii.gz"), fixed, affine)
        save(w(f"{case}_fixed_labels.nii.gz"), labels, affine)
        np.save(w(f"{case}_truth.npy"), truth)
        np.save(w(f"{case}_head.npy"), _head(fixed))
        moving, moving_labels = p("colin27_t1.nii.gz"), p("colin27_aal.nii.gz")
    elif case == "half_mm":
        t1, colin = load(p("colin27_t1.nii.gz"))
        aal, _ = load(p("colin27_aal.nii.gz"))
        disp = smooth_warp(t1.shape, amplitude, seed + 1)
        n, start = 192, np.array(t1.shape) // 2 - 48  # a 96 mm cube of 0.5 mm voxels
        to_colin = np.eye(4)
        to_colin[:3, :3] *= 0.5
        to_colin[:3, 3] = start
        affine = colin @ to_colin
        q = _grid((n, n, n)) * 0.5 + start[:, None, None, None].astype(np.float32)  # Colin27 voxels
        d = _interp_field(disp, q)  # Colin27 voxels (1 mm)
        moving, moving_labels = w("half_mm_moving.nii.gz"), w("half_mm_moving_labels.nii.gz")
        t1_half, aal_half = _sample(t1, q, 3), _sample(aal, q, 0).astype(np.int16)
        save(moving, t1_half, affine)
        save(moving_labels, aal_half, affine)
        # The fixed pair is the 0.5 mm moving pair through the warp, so that the truth is exact.
        warped = _grid((n, n, n)) + 2 * np.moveaxis(d, -1, 0)
        fixed = _sample(t1_half, warped, 3)
        save(w("half_mm_fixed.nii.gz"), fixed, affine)
        save(w("half_mm_fixed_labels.nii.gz"), _sample(aal_half, warped, 0).astype(np.int16), affine)
        np.save(w("half_mm_truth.npy"), (d @ colin[:3, :3].T).astype(np.float32))
        np.save(w("half_mm_head.npy"), _head(fixed))
    elif case == "mni_affine_contrast":
        t1, affine = load(p("mni2009a_t1.nii.gz"))
        gm, _ = load(p("mni2009a_gm.nii.gz"))
        wm, _ = load(p("mni2009a_wm.nii.gz"))
        _tissue_labels("mni2009a_gm.nii.gz", "mni2009a_wm.nii.gz", w("mni_labels.nii.gz"), data)
        labels, _ = load(w("mni_labels.nii.gz"))
        # World map of fixed point x: y = T(x + u(x)), T a rotation, scaling and shift about the
        # image's centre, u a smooth diffeomorphic warp (mm).
        a = np.deg2rad(6.0)
        rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
        lin = rot @ np.diag([1.05, 0.97, 1.03])
        centre = affine[:3, :3] @ ((np.array(t1.shape) - 1) / 2) + affine[:3, 3]
        u_vox = smooth_warp(t1.shape, amplitude, seed + 2)
        x = np.einsum("ij,j...->...i", affine[:3, :3], _grid(t1.shape)) + affine[:3, 3]
        y = (x + u_vox @ affine[:3, :3].T - centre) @ lin.T + centre + np.array([6.0, -4.0, 3.0])
        coords = np.moveaxis((y - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T, -1, 0).astype(np.float32)
        contrast = _t2_like(t1, gm, wm)
        rng = np.random.default_rng(seed + 3)
        from scipy.ndimage import gaussian_filter

        bias = gaussian_filter(rng.standard_normal(t1.shape), 20.0)
        bias = 1 + 0.1 * bias / np.abs(bias).max()  # a smooth field within +-10 %
        fixed = _sample(contrast, coords, 1) * bias
        save(w("mac_fixed.nii.gz"), fixed.astype(np.float32), affine)
        save(w("mac_fixed_labels.nii.gz"), _sample(labels, coords, 0).astype(np.int16), affine)
        np.save(w(f"{case}_truth.npy"), (y - x).astype(np.float32))
        np.save(w(f"{case}_head.npy"), _head(_sample(t1, coords, 1)))
        return spec | {
            "moving": p("mni2009a_t1.nii.gz"),
            "fixed": w("mac_fixed.nii.gz"),
            "moving_labels": w("mni_labels.nii.gz"),
            "fixed_labels": w("mac_fixed_labels.nii.gz"),
            "labels": "tissue",
            "true_warp": w(f"{case}_truth.npy"),
            "head_mask": w(f"{case}_head.npy"),
        }
    else:
        raise ValueError(case)
    return spec | {
        "moving": moving,
        "fixed": w(f"{case}_fixed.nii.gz"),
        "moving_labels": moving_labels,
        "fixed_labels": w(f"{case}_fixed_labels.nii.gz"),
        "labels": "aal",
        "true_warp": w(f"{case}_truth.npy"),
        "head_mask": w(f"{case}_head.npy"),
    }


# -- scores ------------------------------------------------------------------------------------------


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    s = x.sum() + y.sum()
    return float(2 * (x & y).sum() / s) if s else float("nan")


def identity_outputs(spec: dict, out: str) -> None:
    """What no registration gives: the moving labels on the fixed grid through world identity."""
    labels, mov_affine = load(spec["moving_labels"])
    fixed, fix_affine = load(spec["fixed"])
    vox = np.linalg.inv(mov_affine) @ fix_affine
    g = _grid(fixed.shape)
    coords = np.einsum("ij,j...->i...", vox[:3, :3].astype(np.float32), g) + vox[:3, 3, None, None, None]
    np.save(out + "_labels.npy", _sample(labels, coords, 0).astype(np.int16))
    np.save(out + "_warp.npy", np.zeros((*fixed.shape, 3), np.float32))


def labels_through(spec: dict, warp: np.ndarray) -> np.ndarray:
    """The moving labels on the fixed grid through a warp (RAS mm, fixed voxel p samples A_fix p + warp[p])."""
    labels, mov_affine = load(spec["moving_labels"])
    _, fix_affine = load(spec["fixed_labels"])
    world = np.einsum("ij,j...->...i", fix_affine[:3, :3], _grid(warp.shape[:3])) + fix_affine[:3, 3] + warp
    inv = np.linalg.inv(mov_affine)
    coords = np.moveaxis(world @ inv[:3, :3].T + inv[:3, 3], -1, 0).astype(np.float32)
    return _sample(labels, coords, 0).astype(np.int16)


def folding_percent(warp: np.ndarray, affine: np.ndarray) -> float:
    """Share (%) of fixed voxels where the full map x -> x + warp(x) has det(Jacobian) <= 0."""
    from ilex.transforms.jacobian import folding_fraction, jacobian_determinant

    return 100 * float(folding_fraction(jacobian_determinant(warp, affine)))


def _dice_mean(spec: dict, warped: np.ndarray, fixed: np.ndarray) -> dict:
    if spec["labels"] == "tissue":
        d = {"dice_gm": dice(warped, fixed, 1), "dice_wm": dice(warped, fixed, 2)}
        d["dice_mean"] = (d["dice_gm"] + d["dice_wm"]) / 2
        return d
    labels = [int(x) for x in np.unique(fixed) if x > 0]
    per = [dice(warped, fixed, label) for label in labels]
    return {"dice_mean": float(np.nanmean(per)), "regions": len(labels)}


def score(spec: dict, out: str) -> dict:
    warped = np.load(out + "_labels.npy")
    fixed, affine = load(spec["fixed_labels"])
    fixed = np.rint(fixed).astype(np.int16)
    warp = np.load(out + "_warp.npy")
    # The tool's own label warping against its saved map: checks that the map is read right.
    agree = float(np.mean(labels_through(spec, warp) == warped))
    d = {"folding_percent": folding_percent(warp, affine), "warp_label_agreement": agree}
    # A resection: Dice only outside the cavity and its margin.
    keep = np.load(spec["score_mask"]) if "score_mask" in spec else np.ones(fixed.shape, bool)
    d |= _dice_mean(spec, warped * keep, fixed * keep)
    if os.path.exists(out + "_affine_labels.npy"):  # a tool that also left its affine stage's labels
        affine_stage = np.load(out + "_affine_labels.npy") * keep
        d["dice_mean_affine_stage"] = _dice_mean(spec, affine_stage, fixed * keep)["dice_mean"]
    if "true_warp" in spec:
        truth, head = np.load(spec["true_warp"]), np.load(spec["head_mask"])
        err = np.linalg.norm(warp - truth, axis=-1)[head]
        d.update(
            warp_error_mean_mm=float(err.mean()),
            warp_error_p95_mm=float(np.percentile(err, 95)),
            true_warp_mean_mm=float(np.linalg.norm(truth, axis=-1)[head].mean()),
        )
    return d
