"""`-m optimize` (registration without weights) and `--refine`, on real anatomy at small extents.

The optimiser works on the images' own grid (tests/test_working_grid.py), capped at extent^3
voxels: these tests register the middle 64 mm of the heads (`_middle`), on a 1 mm grid as the
64 mm cube they used before, so that they stay small.

Tolerances are a small multiple of what was measured (in the comments), on the 2-core CPU
machine this was written on; the measurements are deterministic on CPU up to thread order.
"""

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import optax
import pytest
from conftest import fixture_path
from data import data_path
from known_affine import affine_error_mm, colin_through
from scipy.ndimage import gaussian_filter, map_coordinates

import ilex
from ilex.errors import ImageFileError, OptionError
from ilex.image.io import Image, load_image
from ilex.optimize.deformable import _moved, _update
from ilex.optimize.similarity import lncc, lncc_and_gradient, mutual_information
from ilex.optimize.smoothing import downsample2, gaussian_matrix, pyramid, smooth, upsample2
from ilex.registration.methods import OptimizeAffineMethod, OptimizeMethod, RefineMethod, as_method, method_class
from ilex.registration.pipeline import network_fields, register
from ilex.transforms.integrate import voxel_grid
from ilex.transforms.interpolate import interpolate_clamped, interpolate_clamped_with_gradient
from ilex.transforms.jacobian import folding_fraction, jacobian_determinant

EXTENT = 64
FAST = {"levels": (4, 2), "iterations": (40, 20)}


def _reorient(image: Image, codes: str) -> Image:
    img = nib.Nifti1Image(image.data, image.affine).as_reoriented(
        nib.orientations.ornt_transform(nib.io_orientation(image.affine), nib.orientations.axcodes2ornt(tuple(codes)))
    )
    return Image(np.asarray(img.dataobj, np.float32), img.affine, image.path)


def _middle(image: Image, size: int = EXTENT) -> Image:
    # The middle `size` voxels of each axis (around voxel shape / 2, the image's centre).
    lo = np.array([n // 2 - size // 2 for n in image.shape[:3]])
    affine = image.affine.copy()
    affine[:3, 3] += image.affine[:3, :3] @ lo
    crop = tuple(slice(a, a + size) for a in lo)
    return Image(np.ascontiguousarray(image.data[crop]), affine, image.path)


def _known_warp(shape, amplitude=3.0, period=9.0):
    # A smooth displacement (voxels = mm on Colin27's 1 mm RAS grid): at most `amplitude`, its
    # Jacobian determinant >= 1 - 3 amplitude / period > 0, so it is a diffeomorphism.
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float32)
    return np.stack([amplitude * np.sin(grid[..., (d + 1) % 3] / period + d) for d in range(3)], -1).astype(np.float32)


# -- building blocks against slow obvious versions -------------------------------------------------


def test_smoothing_and_resampling_match_scipy():
    rng = np.random.default_rng(0)
    x = rng.random((12, 10, 8)).astype(np.float32)
    mats = [gaussian_matrix(n, 1.5) for n in x.shape]
    ours = np.asarray(smooth(jnp.asarray(x), mats))
    slow = np.einsum("ai,bj,ck,ijk->abc", *mats, x)
    np.testing.assert_allclose(ours, slow, atol=1e-5)
    up = np.asarray(upsample2(jnp.asarray(x)))
    fine = np.asarray(voxel_grid(up.shape)) / 2
    np.testing.assert_allclose(up, np.asarray(interpolate_clamped(jnp.asarray(x), jnp.asarray(fine))), atol=1e-6)
    down = np.asarray(downsample2(jnp.asarray(x)))
    np.testing.assert_allclose(down, _binomial_half(x), atol=1e-6)


def _binomial_half(x: np.ndarray) -> np.ndarray:
    # downsample2's definition in numpy: the [1, 2, 1]/4 filter along each axis (edges
    # replicated), then every second voxel from the first.
    k = np.array([0.25, 0.5, 0.25])
    padded = np.pad(x, 1, mode="edge")
    slow = np.einsum("a,b,c,ijkabc->ijk", k, k, k, np.lib.stride_tricks.sliding_window_view(padded, (3, 3, 3)))
    return slow[::2, ::2, ::2]


def test_odd_sizes_downsample_and_the_pyramid_keeps_the_asked_levels():
    # Odd sizes take the strided slices' last window up to the replicated edge: (n + 1) // 2 voxels.
    x = np.random.default_rng(2).random((11, 9, 7)).astype(np.float32)
    down = np.asarray(downsample2(jnp.asarray(x)))
    assert down.shape == (6, 5, 4)
    np.testing.assert_allclose(down, _binomial_half(x), atol=1e-6)
    levels = pyramid(jnp.asarray(x), {4, 8})
    assert sorted(levels) == [1, 4, 8]
    twice = downsample2(downsample2(jnp.asarray(x)))
    np.testing.assert_array_equal(np.asarray(levels[4]), np.asarray(twice))
    np.testing.assert_array_equal(np.asarray(levels[8]), np.asarray(downsample2(twice)))


def test_the_optimisers_exp_is_scaling_and_squaring_bit_for_bit():
    # exp_velocity carries the field in 4 channels for speed; the numbers must not change.
    from ilex.optimize.deformable import exp_velocity
    from ilex.transforms.integrate import scaling_and_squaring

    rng = np.random.default_rng(5)
    for shape in ((9, 11, 7), (23, 27, 23)):
        v = jnp.asarray(rng.normal(0, 2.0, (*shape, 3)).astype(np.float32))
        for steps in (0, 1, 7):
            got = exp_velocity(v, voxel_grid(shape), steps)
            assert got.shape == v.shape
            assert jnp.array_equal(got, scaling_and_squaring(v, steps))


def test_lnccs_two_programs_give_the_one_programs_update_bit_for_bit():
    # _deformable_step runs LNCC's force and the update as two programs for speed (`_force`,
    # `_apply_force`); they must give what the single program `_update` gives, masked or not.
    from ilex.optimize.deformable import _deformable_step, _optimizer
    from ilex.optimize.smoothing import gaussian_matrices

    rng = np.random.default_rng(6)
    shape, shape_v = (20, 24, 18), (10, 12, 9)
    fix, mov = (jnp.asarray(gaussian_filter(rng.random(shape), 2).astype(np.float32)) for _ in range(2))
    weight = jnp.asarray((rng.random(shape) > 0.2).astype(np.float32))
    v = jnp.asarray(rng.normal(0, 0.3, (*shape_v, 3)).astype(np.float32))
    grid, grid_v = voxel_grid(shape), voxel_grid(shape_v)
    fluid, field = gaussian_matrices(shape_v, 1.0), gaussian_matrices(shape_v, 1.5)
    matrix, step, reference = jnp.eye(4, dtype=jnp.float32), jnp.float32(0.25), jnp.float32(0.1)
    common = {"similarity": "lncc", "radius": 2, "bins": 64, "factor": 2, "momentum": 0.5}
    for masks in ({}, {"fix_weight": weight}):
        opt_state = _optimizer(0.5).init(v)
        got = _deformable_step(
            v + 0, opt_state, fix, mov, matrix, grid, grid_v, fluid, field, step, reference, steps=5, **common, **masks
        )
        warped = _moved(v, mov, matrix, grid, grid_v, factor=2, steps=5)
        weight_net = None if not masks else masks["fix_weight"]
        expected = _update(v + 0, opt_state, fix, warped, fluid, field, step, reference, weight_net, **common)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected), strict=True):
            assert jnp.array_equal(a, b)


def test_the_affine_steps_hand_derivative_is_autodiffs():
    # The affine step differentiates the trilinear read by hand (`interpolate_clamped_with_gradient`) and chains
    # it to the parameters itself; JAX's autodiff of the plain loss is the reference, with points
    # on and beyond the grid's faces, with and without each mask.
    from ilex.optimize import affine
    from ilex.optimize.similarity import masked_mutual_information

    rng = np.random.default_rng(7)
    shape = (9, 10, 8)
    mov = jnp.asarray(rng.random(shape).astype(np.float32))
    coords = rng.uniform(-1.5, 10.5, (400, 3)).astype(np.float32)
    coords[:50, 0], coords[50:100, 1], coords[100:150, 2] = 0.0, 9.0, 7.0  # on the faces
    coords = jnp.asarray(coords)
    sampled = interpolate_clamped_with_gradient(affine._four_channels(mov), coords)
    value = lambda c: interpolate_clamped(mov, c)
    np.testing.assert_array_equal(sampled[:, 0], value(coords))
    by_autodiff = jax.vmap(jax.grad(lambda c: value(c[None])[0]))(coords)
    np.testing.assert_allclose(sampled[:, 1:], by_autodiff, atol=1e-6)  # 6e-8 measured

    fix = jnp.asarray(rng.random(shape).astype(np.float32))
    grid = voxel_grid(shape)
    fix_weight = jnp.asarray((rng.random(shape) > 0.3).astype(np.float32))
    mov_weight = jnp.asarray((rng.random(shape) > 0.2).astype(np.float32))
    params = jnp.asarray(rng.normal(0, 0.05, 12).astype(np.float32))
    start = np.eye(4, dtype=np.float32)
    start[:3, 3] = 0.4
    geometry = {"scale": 1, "centre": (4.0, 4.5, 3.5), "unit": 2.0}
    schedule = {"learning_rate": 0.01, "iterations": 50, "bins": 16}
    for fw, mw in ((None, None), (fix_weight, None), (None, mov_weight), (fix_weight, mov_weight)):

        def loss(p, fw=fw, mw=mw):
            coords = affine._level_coords(p, start, grid, geometry["scale"], geometry["centre"], geometry["unit"])
            moved = interpolate_clamped(mov, coords)
            if fw is None and mw is None:
                return -mutual_information(fix, moved, schedule["bins"])
            weight = affine.cost_weight(fw, mw, coords)
            return -masked_mutual_information(fix, moved, weight, schedule["bins"])

        minus_mi, grad = jax.value_and_grad(loss)(params)
        opt = affine._optimizer(schedule["learning_rate"], schedule["iterations"])
        state = opt.init(params)
        updates, _ = opt.update(grad, state)
        expected = params + updates
        got, state_after, mi = affine._affine_step(
            params, state, start, fix, affine._four_channels(mov), grid, fw, mw, **geometry, **schedule
        )
        np.testing.assert_allclose(mi, -minus_mi, rtol=1e-5)  # 1.3e-6 measured: the histogram summed in its own program
        # Adam's first moment after one step is a tenth of the gradient itself (its update is
        # nearly the gradient's sign, which would hide an error in its size).
        first_moment = optax.tree_utils.tree_get(state_after, "mu")
        # Within 2e-5 of the gradient's largest component (at most 2.6e-6 measured over the four cases).
        assert jnp.abs(first_moment - 0.1 * grad).max() <= 2e-5 * jnp.abs(0.1 * grad).max()
        np.testing.assert_allclose(got, expected, atol=1e-8)  # under 1e-9 measured


def test_similarities():
    rng = np.random.default_rng(1)
    f = jnp.asarray(rng.random((16, 16, 16)).astype(np.float32))
    assert float(lncc(f, f)) == pytest.approx(1.0, abs=1e-3)
    assert float(lncc(f, 1.0 - f)) == pytest.approx(1.0, abs=1e-3)  # squared: contrast sign free
    assert float(lncc(f, jnp.asarray(rng.random((16, 16, 16)).astype(np.float32)))) < 0.2
    assert float(mutual_information(f, 1.0 - f)) == pytest.approx(float(mutual_information(f, f)), rel=1e-3)
    # The local (ANTs) gradient points uphill: a small step along it raises LNCC.
    m = jnp.clip(f + 0.3 * jnp.asarray(rng.random((16, 16, 16)).astype(np.float32)), 0, 1)
    value, grad = lncc_and_gradient(f, m)
    assert float(lncc(f, m + 0.05 * grad / jnp.abs(grad).max())) > float(value)


# -- registrations -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.realdata
def test_identical_images_give_near_zero_warp():
    colin = _middle(load_image(data_path("colin27_t1.nii.gz")))
    result = register(colin, colin, method=OptimizeMethod(**FAST), extent=EXTENT, keep_inputs=True)
    assert result.space.shape == (EXTENT,) * 3 and result.space.voxel_size == 1.0
    # In the network grid, in the head, away from the far faces (where the pipeline clamps the
    # coarse grid's last voxel, as it does for SynthMorph's velocity).
    fw, _ = network_fields(result.transform, 7, result.space.shape)
    head = np.asarray(result.inputs[1]) > 0.1
    head[-4:], head[:, -4:], head[:, :, -4:] = False, False, False
    # Measured: 0.097 mm at most, 0.013 mm on average (0.12 and 0.015 in the 64 mm LIA cube before).
    assert np.linalg.norm(np.asarray(fw), axis=-1)[head].max() < 0.5


def _in_cube(result, margin: int = 4) -> np.ndarray:
    # Fixed voxels inside the network grid, away from its faces: the images are the middles of
    # the heads, and at their faces the warp is the pipeline's clamped extension.
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in result.fixed.shape], indexing="ij"), -1).astype(np.float64)
    net = grid @ result.space.fix_to_net[:3, :3].T + result.space.fix_to_net[:3, 3]
    return np.all((net >= margin) & (net <= np.asarray(result.space.shape) - 1 - margin), axis=-1)


@pytest.mark.slow
@pytest.mark.realdata
def test_recovers_a_known_warp():
    colin = load_image(data_path("colin27_t1.nii.gz"))
    warp = _known_warp(colin.shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in colin.shape], indexing="ij"), 0).astype(np.float32)
    warped = map_coordinates(colin.data, grid + np.moveaxis(warp, -1, 0), order=1)
    method = OptimizeMethod(**FAST)
    moving, fixed = _middle(colin), _middle(Image(warped, colin.affine, "warped"))
    result = register(moving, fixed, method=method, extent=EXTENT)
    warp = _middle(Image(warp, colin.affine)).data  # the crops share their offset: the same warp
    brain = (moving.data > 0.3 * colin.data.max()) & _in_cube(result)
    error = np.linalg.norm(result.forward_vox - warp, axis=-1)[brain]
    before = np.linalg.norm(warp, axis=-1)[brain]
    # Measured: mean error 1.02 mm, 95th percentile 2.43 mm, from 3.57 mm mean before (1.15 and
    # 2.98 mm in the 64 mm LIA cube before the working grid).
    assert error.mean() < 1.6 and error.mean() < 0.5 * before.mean()
    assert np.percentile(error, 95) < 4.0
    assert folding_fraction(jacobian_determinant(result.forward, colin.affine)) == 0.0


@pytest.mark.slow
@pytest.mark.realdata
def test_orientation_of_the_inputs_does_not_matter():
    colin = load_image(data_path("colin27_t1.nii.gz"))
    mni = _middle(load_image(data_path("mni2009a_t1.nii.gz")))
    ras = register(_middle(colin), mni, method=OptimizeMethod(**FAST), extent=EXTENT)
    las = register(_middle(_reorient(colin, "LAS")), mni, method=OptimizeMethod(**FAST), extent=EXTENT)
    # Each network grid is centred on its own image, and flipping an axis moves the voxel
    # `shape / 2` that defines the centre (and the middle cut) by one voxel: the network inputs
    # differ by a 1 mm shift, so the optimisation runs from slightly different starts.
    brain = (mni.data > 0.3 * mni.data.max()) & _in_cube(ras)
    diff = np.linalg.norm(las.forward - ras.forward, axis=-1)[brain]
    # Measured: mean 0.10 mm, max 0.44 mm (0.21 and 1.70 mm in the 64 mm LIA cube before).
    assert diff.mean() < 0.5 and diff.max() < 3.0


@pytest.mark.slow
@pytest.mark.realdata
def test_affine_stage_alone_answers_with_the_matrix():
    # Colin27 seen through a known affine (7 degrees about z, 4 % wider along x, a shift). The
    # affine stage alone (ilex template's first round without weights) answers with a matrix: the
    # same map as -m optimize with no deformable iterations (whose answer is a zero velocity around
    # that matrix), and the known one.
    angle = np.deg2rad(7.0)
    turn = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    colin, fixed, known = colin_through(turn @ np.diag([1.04, 1.0, 1.0]), [2.0, -3.0, 1.5])
    assert method_class("optimize-affine").yields_matrix
    result = register(colin, fixed, method=OptimizeAffineMethod())
    assert result.is_matrix and result.transform.velocity is None
    zero = register(colin, fixed, method=OptimizeMethod(iterations=(0, 0)))
    # Away from the grid's faces, where the velocity's path extends its coarse field by clamping
    # and the matrix's is exact. Measured: 1.1e-5 mm at most (float32 sums in another order).
    inside = _in_cube(zero)
    np.testing.assert_allclose(result.forward[inside], zero.forward[inside], atol=1e-3)
    # result.affine is moving RAS -> fixed RAS, the inverse of `known`. Measured over the head:
    # 0.12 mm from the known map on average, 0.27 mm at most (8.4 mm with no registration; 2.4 mm
    # when the coarse level stopped at 80 iterations).
    error = affine_error_mm(result.affine, known, colin)
    assert error.mean() < 0.5 and error.max() < 1.0, (error.mean(), error.max())


@pytest.mark.slow
@pytest.mark.realdata
def test_refine_improves_on_the_network():
    model = ilex.load(fixture_path("net_e64_mixed.h5"))
    moving, fixed = data_path("colin27_t1.nii.gz"), data_path("mni2009a_t1.nii.gz")
    start = register(moving, fixed, model, hyper=0.5, extent=EXTENT, keep_inputs=True)
    refine = as_method(model, "refine", hyper=0.5)
    assert isinstance(refine, RefineMethod)
    assert isinstance(as_method(model, "optimize", hyper=0.5), OptimizeMethod)  # -m optimize ignores a loaded model
    refined = register(moving, fixed, model, method=refine, hyper=0.5, extent=EXTENT, keep_inputs=True)

    def similarity(result):
        fw, _ = network_fields(result.transform, 7)
        mov, fix = (jnp.asarray(a) for a in result.inputs)
        return float(lncc(fix, interpolate_clamped(mov, voxel_grid(fw.shape[:3]) + fw, fill=0.0)))

    # Measured: LNCC 0.268 after the random-weight network, 0.416 after refining.
    assert similarity(refined) > similarity(start) + 0.05


@pytest.mark.slow
@pytest.mark.realdata
def test_each_level_compiles_once():
    # Per grid shape: another pair on grids of the same shapes compiles nothing new.
    colin = _middle(load_image(data_path("colin27_t1.nii.gz")))
    register(colin, colin, method=OptimizeMethod(**FAST), extent=EXTENT)
    sizes = _moved._cache_size(), _update._cache_size()
    register(_middle(load_image(data_path("mni2009a_t1.nii.gz"))), colin, method=OptimizeMethod(**FAST), extent=EXTENT)
    assert (_moved._cache_size(), _update._cache_size()) == sizes


# -- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"hyper": 1.5}, "hyper=1.5"),  # the library names its arguments; the CLI says -r (test_public_api)
        ({"similarity": "ssd"}, "similarity=ssd"),
        ({"levels": (3,), "iterations": (10,)}, "level 3: levels are 1, 2, 4 or 8 voxels"),
        ({"levels": (4, 2), "iterations": (10,)}, "one iteration count per level"),
        ({"levels": (2,), "iterations": (-1,)}, "-1 iterations"),
    ],
)
def test_bad_options(kwargs, expected):
    with pytest.raises(OptionError, match=expected.replace("(", r"\(")) as info:
        OptimizeMethod(**kwargs)
    assert "\n" not in str(info.value)


def test_refine_needs_a_method():
    with pytest.raises(OptionError, match="refine: needs a first method"):
        RefineMethod(first=None)
    assert isinstance(as_method(None, "optimize", hyper=0.2, similarity="mi", progress=False), OptimizeMethod)


def test_constant_image_is_refused():
    rng = np.random.default_rng(2)
    # Larger than 64^3 voxels: the grid, coarsened to fit, still lies inside the images, so that no
    # zero padding gives the flat image an edge.
    head = Image(rng.random((80, 80, 80)).astype(np.float32), np.eye(4), "head.nii.gz")
    flat = Image(np.full((80, 80, 80), 7.0, np.float32), np.eye(4), "flat.nii.gz")
    with pytest.raises(ImageFileError, match="flat.nii.gz") as info:
        register(flat, head, method="optimize", extent=EXTENT)
    assert "\n" not in str(info.value)
    with pytest.raises(OptionError, match="flat"):
        OptimizeMethod().estimate(jnp.zeros((32, 32, 32)), jnp.zeros((32, 32, 32)))
