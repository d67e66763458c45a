"""Cost-function masks (`--mask-fixed`, `--mask-moving`; ANTs' `-x`) for `-m optimize`.

The masked similarities against their definition (voxels outside the mask take no part: the
value ignores them, the gradient there is exactly 0), the refusals of bad masks before any work,
and, on real anatomy at low resolution, a simulated lesion: MNI152 2009a at 2 mm seen through a
known affine and warp, a ball of 12 mm radius zeroed in the moving image, and a fixed-image mask
that leaves it out. Tolerances are a small multiple of what was measured (in the comments), on
the shared 2-core CPU machine this was written on.
"""

import json

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from data import data_path
from scipy.ndimage import binary_dilation, gaussian_filter, map_coordinates

from ilex.cli.main import main
from ilex.errors import ImageFileError, OptionError
from ilex.image.io import Image, load_image
from ilex.optimize.similarity import (
    lncc,
    masked_lncc,
    masked_lncc_and_gradient,
    masked_mutual_information,
    mutual_information,
)
from ilex.qc.slices import VIEWS, load_slices
from ilex.registration.methods import OptimizeMethod
from ilex.registration.pipeline import register, resample
from ilex.transforms.jacobian import folding_fraction, jacobian_determinant

# -- the masked similarities ------------------------------------------------------------------------


def _images(seed: int = 0, n: int = 16):
    rng = np.random.default_rng(seed)
    f = rng.random((n, n, n)).astype(np.float32)
    m = np.clip(f + 0.3 * rng.random((n, n, n)), 0, 1).astype(np.float32)
    weight = np.ones((n, n, n), np.float32)
    weight[4:9, 5:11, 3:8] = 0.0  # a hole, as a lesion cut out of a head mask
    weight[:, :, -2:] = 0.0
    return jnp.asarray(f), jnp.asarray(m), jnp.asarray(weight)


@pytest.mark.parametrize(
    "similarity",
    [lambda f, m, w: masked_lncc(f, m, w), lambda f, m, w: masked_mutual_information(f, m, w)],
    ids=["lncc", "mi"],
)
def test_voxels_outside_the_mask_take_no_part(similarity):
    f, m, w = _images()
    outside = np.asarray(w) == 0
    grad = np.asarray(jax.grad(similarity, argnums=1)(f, m, w))
    assert np.all(grad[outside] == 0.0)  # exactly: the value does not depend on them
    assert np.abs(grad[~outside]).max() > 0
    noise = jnp.asarray(np.random.default_rng(5).random(m.shape).astype(np.float32))
    changed = jnp.where(w == 0, noise, m)
    assert float(similarity(f, changed, w)) == float(similarity(f, m, w))


def test_the_local_lncc_gradient_is_zero_outside_and_points_uphill():
    f, m, w = _images(1)
    value, grad = masked_lncc_and_gradient(f, m, w)
    assert float(value) == pytest.approx(float(masked_lncc(f, m, w)), rel=1e-6)
    assert np.all(np.asarray(grad)[np.asarray(w) == 0] == 0.0)
    assert float(masked_lncc(f, m + 0.05 * grad / jnp.abs(grad).max(), w)) > float(value)


def test_a_mask_of_ones_measures_what_no_mask_does():
    f, m, _ = _images(2)
    ones = jnp.ones_like(f)
    # Measured: equal to 1e-7 (float32 rounding of the weighted sums).
    assert float(masked_lncc(f, m, ones)) == pytest.approx(float(lncc(f, m)), rel=1e-5)
    assert float(masked_mutual_information(f, m, ones)) == pytest.approx(float(mutual_information(f, m)), rel=1e-5)


# -- refusals before any work -----------------------------------------------------------------------


def _head(n: int = 32) -> np.ndarray:
    # A bright ball with a darker core on a dark background: a "head" with some content.
    g = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1) - (n - 1) / 2
    r = np.linalg.norm(g, axis=-1)
    return ((r < 12) * (1.0 + 0.5 * (r < 6)) + 0.02).astype(np.float32)


def _save(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), path)
    return str(path)


@pytest.fixture
def pair(tmp_path):
    return _save(tmp_path / "moving.nii.gz", _head()), _save(tmp_path / "fixed.nii.gz", np.roll(_head(), 1, 0))


def _refusal(pair, tmp_path, capsys, mask, *extra):
    moving, fixed = pair
    out = tmp_path / "moved.nii.gz"
    code = main(["register", "-m", "optimize", moving, fixed, "--mask-fixed", mask, "-o", str(out), "-q", *extra])
    err = capsys.readouterr().err.strip()
    assert code != 0 and not out.exists()
    assert len(err.splitlines()) == 1
    return err


def test_bad_masks_are_refused_naming_the_file(pair, tmp_path, capsys):
    head = _head() > 0.5
    grey = _save(tmp_path / "grey.nii.gz", head * 0.7)
    err = _refusal(pair, tmp_path, capsys, grey)
    assert "grey.nii.gz" in err and "not binary" in err and "--mask-threshold" in err
    err = _refusal(pair, tmp_path, capsys, _save(tmp_path / "empty.nii.gz", np.zeros((32, 32, 32), np.float32)))
    assert "empty.nii.gz" in err and "empty" in err
    lesion = np.zeros((32, 32, 32), np.float32)
    lesion[14:17, 14:17, 14:17] = 1  # the lesion itself rather than the head without it
    err = _refusal(pair, tmp_path, capsys, _save(tmp_path / "lesion.nii.gz", lesion))
    assert "lesion.nii.gz" in err and "inverted" in err
    far = np.eye(4)
    far[:3, 3] = 500.0  # a mask of another image, nowhere near this head
    err = _refusal(pair, tmp_path, capsys, _save(tmp_path / "far.nii.gz", head.astype(np.float32), far))
    assert "far.nii.gz" in err and "covers 0.0 %" in err
    moving, fixed = pair
    code = main(["register", "-m", "optimize", moving, fixed, "--mask-fixed", grey, "-o", grey, "-q"])
    assert code != 0 and "would overwrite the fixed mask" in capsys.readouterr().err
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image")
    assert "junk.nii.gz" in _refusal(pair, tmp_path, capsys, str(tmp_path / "junk.nii.gz"))
    assert "no such" in _refusal(pair, tmp_path, capsys, str(tmp_path / "missing.nii.gz"))


def test_a_threshold_makes_any_values_a_mask(pair, tmp_path):
    moving, fixed = pair
    grey = _save(tmp_path / "grey.nii.gz", (_head() > 0.5) * 0.7)
    with pytest.raises(ImageFileError, match="not binary"):
        register(moving, fixed, method="optimize", mask_fixed=grey, iterations=(1, 1))
    with pytest.raises(ImageFileError, match="empty"):
        register(moving, fixed, method="optimize", mask_fixed=grey, mask_threshold=0.9, iterations=(1, 1))
    result = register(moving, fixed, method="optimize", mask_fixed=grey, mask_threshold=0.5, iterations=(1, 1))
    assert set(result.masks) == {"fixed"} and set(np.unique(result.masks["fixed"].data)) == {0.0, 1.0}


def test_masks_are_for_the_optimiser(pair, tmp_path, capsys):
    moving, fixed = pair
    mask = _save(tmp_path / "mask.nii.gz", (_head() > 0.5).astype(np.float32))
    # SynthMorph's networks see the whole images: refused before any weights are looked for.
    err = _refusal(pair, tmp_path, capsys, mask, "-m", "joint")
    assert err.startswith("ilex: --mask-fixed") or "--mask-fixed" in err
    assert "cannot use a cost-function mask" in err
    with pytest.raises(OptionError, match="mask_threshold"):
        register(moving, fixed, method="optimize", mask_threshold=0.5)


def test_batch_rows_take_masks(pair, tmp_path, capsys):
    moving, fixed = pair
    head = _head() > 0.5
    hole = head.copy()
    hole[12:16, 12:16, 12:16] = False
    mask = _save(tmp_path / "mask.nii.gz", hole.astype(np.float32))
    _save(tmp_path / "grey.nii.gz", head * 0.7)
    argv = [moving, fixed, "-m", "optimize", "--iterations", "2", "2", "-q"]
    qc = tmp_path / "qc"
    assert (
        main(["register", *argv, "--mask-fixed", mask, "-o", str(tmp_path / "register.nii.gz"), "--qc", str(qc)]) == 0
    )
    # The report says which mask and draws its outline (the slices keep where it is).
    assert json.loads((qc / "qc.json").read_text())["masks"] == {"fixed": mask}
    assert "cost-function mask" in (qc / "report.html").read_text()
    shown = load_slices(qc / "report.npz")
    assert set(shown.mask) == set(VIEWS) and shown.mask["axial"].any() and not shown.mask["axial"].all()
    rows = [
        "moving,fixed,o,mask_fixed,mask_threshold,id",
        f"{moving},{fixed},batch.nii.gz,mask.nii.gz,,masked",
        f"{moving},{fixed},bad.nii.gz,grey.nii.gz,,grey",
        f"{moving},{fixed},grey_thresholded.nii.gz,grey.nii.gz,0.5,thresholded",
    ]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    code = main(["batch", str(tmp_path / "pairs.csv"), "-m", "optimize", "--iterations", "2", "2", "-q"])
    assert code != 0  # one row failed, alone
    assert "grey.nii.gz" in capsys.readouterr().err
    # The same file as ilex register --mask-fixed writes, byte for byte.
    assert (tmp_path / "batch.nii.gz").read_bytes() == (tmp_path / "register.nii.gz").read_bytes()
    assert not (tmp_path / "bad.nii.gz").exists() and (tmp_path / "grey_thresholded.nii.gz").exists()
    record = json.loads((tmp_path / "batch.nii.gz.ilex-batch.json").read_text())
    assert record["settings"]["masks"] == {"mask_fixed": mask}


# -- a simulated lesion on real anatomy ---------------------------------------------------------------


def _lesion_case():
    """MNI152 2009a at 2 mm (fixed), GM/WM labels, and the same seen through a known map (moving),
    with and without a 12 mm ball zeroed where the fixed image has cortex and white matter."""
    t1 = load_image(data_path("mni2009a_t1.nii.gz"))
    gm, wm = (load_image(data_path(f"mni2009a_{t}.nii.gz")).data for t in ("gm", "wm"))
    labels = np.zeros(t1.shape, np.float32)
    labels[gm > 127] = 1
    labels[wm > 127] = 2
    affine = t1.affine.copy()
    affine[:3, :3] *= 2
    fixed, labels = gaussian_filter(t1.data, 0.8)[::2, ::2, ::2].copy(), labels[::2, ::2, ::2].copy()
    shape = fixed.shape
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), 0)
    centre = (np.array(shape) - 1) / 2
    a = np.deg2rad(4.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    column = lambda x: np.asarray(x, np.float32)[:, None, None, None]
    warp = np.stack([1.5 * np.sin(grid[(d + 1) % 3] / 6.0 + d) for d in range(3)], 0)  # up to 3 mm
    # Moving voxel y shows the fixed image at phi(y): a 4 degree turn, a shift and the warp.
    phi = np.einsum("ij,j...->i...", rot, grid - column(centre)) + column(centre) + column([2, -1.5, 1]) + warp
    ball = np.linalg.norm(grid - column(np.array([0.35, 0.55, 0.6]) * np.array(shape)), axis=0) < 6.0
    clean = map_coordinates(fixed, phi, order=1)
    lesioned = map_coordinates(fixed * ~ball, phi, order=1)
    moving_labels = map_coordinates(labels, phi, order=0)
    # The fixed image's cost-function mask: everything but the ball and a 4 mm margin; the moving
    # image's: the same where the ball is in the moving image.
    outside = ~binary_dilation(ball, iterations=2)
    outside_moving = ~binary_dilation(map_coordinates(ball.astype(np.float32), phi, order=0) > 0, iterations=2)
    return affine, fixed, labels, clean, lesioned, moving_labels, ball, outside, outside_moving


def _dice(moved_labels, labels, where) -> float:
    scores = []
    for k in (1, 2):
        a, b = (moved_labels == k) & where, (labels == k) & where
        scores.append(2 * (a & b).sum() / (a.sum() + b.sum()))
    return float(np.mean(scores))


@pytest.mark.realdata
@pytest.mark.slow
def test_a_mask_over_a_lesion_keeps_the_rest_as_without_it(tmp_path):
    affine, fixed, labels, clean, lesioned, moving_labels, ball, outside, outside_moving = _lesion_case()
    assert (labels[ball] > 0).mean() > 0.9  # the ball is in the brain: cortex and white matter
    mask = Image(outside.astype(np.float32), affine, "mask.nii.gz")
    near = binary_dilation(ball, iterations=8) & outside  # up to 16 mm from the lesion
    extent = 96  # the working grid's cap: 92x108x88 voxels of 2.17 mm

    def run(moving, **masks):
        result = register(
            Image(moving, affine, "moving"),
            Image(fixed, affine, "fixed"),
            method=OptimizeMethod(),
            extent=extent,
            **masks,
        )
        moved = np.asarray(
            resample(jnp.asarray(moving_labels), jnp.asarray(result.forward_vox), "nearest", jnp.float32(0))
        )
        assert folding_fraction(jacobian_determinant(result.forward, affine)) == 0.0
        return result, _dice(moved, labels, outside), _dice(moved, labels, near)

    _, without, without_near = run(clean)
    _, _, unmasked_near = run(lesioned)
    masked_result, masked, masked_near = run(lesioned, mask_fixed=mask)
    # The same lesion left out by a mask of the moving image, read through the map as it changes.
    moving_mask = Image(outside_moving.astype(np.float32), affine)
    _, moving_masked, moving_masked_near = run(lesioned, mask_moving=moving_mask)
    # Measured (GM/WM Dice): outside the lesion and its 4 mm margin 0.9630 without the lesion, 0.9623
    # with it unmasked, 0.9620 with the fixed mask, 0.9613 with the moving one; within 16 mm of it
    # 0.9808, 0.9530, 0.9768 and 0.9737.
    assert masked >= without - 0.005 and moving_masked >= without - 0.005  # the goal
    assert unmasked_near < without_near - 0.015  # the lesion does harm its surroundings ...
    assert masked_near > unmasked_near + 0.015  # ... and either mask undoes most of it
    assert moving_masked_near > unmasked_near + 0.01
    assert masked_near > without_near - 0.02
    # Reruns are bit-identical, with a mask too.
    again, _, _ = run(lesioned, mask_fixed=mask)
    np.testing.assert_array_equal(again.forward_vox, masked_result.forward_vox)
