"""The promises of the functional layer (`ilex.transforms`, `ilex.losses`): jit, vmap and grad.

Gradients are checked against central finite differences of the same function along random
smooth directions. Trilinear interpolation is piecewise linear, so the loss has kinks wherever a
sample crosses a voxel boundary: a difference over h averages the derivative across the kinks it
spans (measured on these textured 16³ images: 25 % off at h = 1e-2 voxel, 0.2 % at 3e-3), and
float32 rounding grows as h shrinks. h = 3e-3 with fields that vanish at the border (no sample
crosses the field of view's edge, where the moved image jumps to the fill) is where both are
small. The bounds below are a few times the measured errors.
"""

import doctest
import importlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture_path

import ilex
from ilex import losses, transforms


def smooth_field(key, shape, amplitude):
    """A smooth random (x, y, z, 3) field: a few low-frequency cosines per component."""
    grid = transforms.voxel_grid(shape) / jnp.asarray(shape, jnp.float32)[None, None, None]
    k1, k2 = jax.random.split(key)
    freq = jax.random.uniform(k1, (3, 3, 3), minval=0.5, maxval=2.0)
    phase = jax.random.uniform(k2, (3, 3), maxval=2 * jnp.pi)
    comps = [sum(jnp.cos(2 * jnp.pi * (grid @ freq[c, t]) + phase[c, t]) for t in range(3)) / 3 for c in range(3)]
    return amplitude * jnp.stack(comps, -1)


def blob_image(shape, centre, radius):
    grid = transforms.voxel_grid(shape)
    return jax.nn.sigmoid(radius - jnp.linalg.norm(grid - jnp.asarray(centre, jnp.float32)[None, None, None], axis=-1))


def window(shape):
    """sin² bump per axis, (x, y, z, 1): fields multiplied by it vanish at the border."""
    grid = transforms.voxel_grid(shape)
    return jnp.prod(jnp.sin(jnp.pi * (grid + 0.5) / jnp.asarray(shape, jnp.float32)[None, None, None]) ** 2, -1)[
        ..., None
    ]


def textured_blob(key, shape, centre, radius):
    """A head-like image: textured inside a soft ball, near 0 at the border."""
    return blob_image(shape, centre, radius) * (0.6 + 0.3 * smooth_field(key, shape, 1.0)[..., 0])


def pair_loss(velocity, moving, fixed, similarity="lncc", steps=5, lam=0.05):
    moved = transforms.warp_image(moving, transforms.integrate_velocity(velocity, steps))
    sim = losses.lncc(fixed, moved) if similarity == "lncc" else losses.mutual_information(fixed, moved)
    return -sim + lam * losses.smoothness(velocity)


SHAPE = (16, 16, 16)


@pytest.fixture(scope="module")
def pair():
    moving = blob_image(SHAPE, (7.3, 8.1, 7.7), 4.5)
    fixed = blob_image(SHAPE, (8.2, 7.6, 8.4), 5.0)
    return moving, fixed


def directional_check(f, x, key, h=3e-3):
    """(autodiff, central finite difference) of f along a random smooth direction at x."""
    direction = smooth_field(key, x.shape[:3], 1.0) * window(x.shape[:3])
    auto = jnp.vdot(jax.grad(f)(x), direction)
    numeric = (f(x + h * direction) - f(x - h * direction)) / (2 * h)
    return float(auto), float(numeric)


@pytest.mark.parametrize("similarity", ["lncc", "mi"])
def test_grad_through_integrate_warp_similarity(getkey, similarity):
    moving = textured_blob(getkey(), SHAPE, (7.3, 8.1, 7.7), 5.0)
    fixed = textured_blob(getkey(), SHAPE, (8.2, 7.6, 8.4), 5.0)
    velocity = smooth_field(getkey(), SHAPE, 0.7) * window(SHAPE)
    f = jax.jit(lambda v: pair_loss(v, moving, fixed, similarity))
    for _ in range(3):
        auto, numeric = directional_check(f, velocity, getkey())
        assert abs(numeric) > 1e-4  # the direction changes the loss: the check has something to compare
        # measured: relative error <= 5.0e-3 (lncc) and 3.5e-2 (mi, whose soft histogram has kinks too)
        assert abs(auto - numeric) <= (0.02 if similarity == "lncc" else 0.1) * abs(numeric), (auto, numeric)


def _compose_oracle(outer, inner):
    """compose_fields by scipy, in float64: inner(p) + outer(p + inner(p)), trilinear, clamped at the
    border (map_coordinates' "nearest" mode extends the edge values, as interpolate_clamped does)."""
    from scipy.ndimage import map_coordinates

    outer, inner = np.asarray(outer, np.float64), np.asarray(inner, np.float64)
    points = np.moveaxis(np.asarray(transforms.voxel_grid(inner.shape[:3]), np.float64) + inner, -1, 0)
    return inner + np.stack([map_coordinates(outer[..., c], points, order=1, mode="nearest") for c in range(3)], -1)


def _integrate_oracle(velocity, steps):
    """Scaling and squaring by scipy, in float64: u = v / 2**steps, then steps times u += u(p + u)."""
    u = np.asarray(velocity, np.float64) / 2**steps
    for _ in range(steps):
        u = _compose_oracle(u, u)
    return u


def _warp_oracle(image, displacement):
    """warp_image by scipy, in float64: trilinear, 0 where floor(p + d) leaves the grid (the upper
    neighbour clamped to the last voxel, which map_coordinates' "nearest" mode does too)."""
    from scipy.ndimage import map_coordinates

    points = np.asarray(transforms.voxel_grid(image.shape), np.float64) + np.asarray(displacement, np.float64)
    values = map_coordinates(np.asarray(image, np.float64), np.moveaxis(points, -1, 0), order=1, mode="nearest")
    valid = np.all((np.floor(points) >= 0) & (np.floor(points) <= np.asarray(image.shape) - 1), axis=-1)
    return np.where(valid, values, 0.0)


def _jacobian_oracle(displacement):
    """det(I + du/dp) by numpy, in float64: numpy.gradient's differences, numpy.linalg.det."""
    grads = np.gradient(np.asarray(displacement, np.float64), axis=(0, 1, 2))
    return np.linalg.det(np.stack(grads, -1) + np.eye(3))


def test_jit_matches_eager(pair, getkey):
    """Each function of the functional layer jitted, and run op by op (under `jax.disable_jit`, which
    also switches off the functions' own inner jits and turns fori_loop into a Python loop, so the two
    runs are different programs), and both against an answer computed without ilex (scipy and numpy
    in float64, `_integrate_oracle`, `_warp_oracle`, `_jacobian_oracle`, `_compose_oracle`).

    Measured largest differences from the oracles (float32 rounding): integrate 5.1e-7, warp 2.0e-7,
    Jacobian 3.7e-7, compose 2.9e-7; jit against op by op at most 3.6e-7. The bounds, 1e-5, are 20
    times the largest. Mutations, each run once by monkeypatching the function in `ilex.transforms`
    (both runs see it), and what the test then reports: one scaling-and-squaring step too few,
    "integrate, jitted ... 7.8e-3"; the displacement's sign flipped in warp_image, "warp, jitted ...
    0.42"; forward differences in jacobian_determinant, "Jacobian, jitted ... 0.52"; compose_fields'
    order swapped, "compose, jitted ... 0.41". Before, the test compared jit with eager only, and
    `jax.jit(f)(x)` with an `f(x)` whose inner jits compile the same program, so it could catch an
    exception and little else: all four mutations passed it (the swap also because it composed a
    field with itself).
    """
    moving, fixed = pair
    v = smooth_field(getkey(), SHAPE, 1.0)
    outer = smooth_field(getkey(), SHAPE, 0.6)
    disp = np.asarray(transforms.integrate_velocity(v, 5))
    cases = (  # name, function (read from ilex.transforms when called), arguments, oracle
        ("integrate", lambda v: transforms.integrate_velocity(v, 5), (v,), _integrate_oracle(v, 5)),
        ("warp", lambda m, d: transforms.warp_image(m, d), (moving, disp), _warp_oracle(moving, disp)),
        ("Jacobian", lambda d: transforms.jacobian_determinant(d), (disp,), _jacobian_oracle(disp)),
        ("compose", lambda o, i: transforms.compose_fields(o, i), (outer, disp), _compose_oracle(outer, disp)),
    )
    for name, f, args, expect in cases:
        jitted = np.asarray(jax.jit(f)(*args))
        with jax.disable_jit():
            eager = np.asarray(f(*args))
        np.testing.assert_allclose(jitted, expect, rtol=0, atol=1e-5, err_msg=f"{name}, jitted")
        np.testing.assert_allclose(eager, expect, rtol=0, atol=1e-5, err_msg=f"{name}, op by op")
        np.testing.assert_allclose(jitted, eager, rtol=0, atol=1e-5, err_msg=f"{name}, jitted against op by op")
    with jax.disable_jit():
        eager_loss = float(pair_loss(v, moving, fixed))
    assert float(jax.jit(pair_loss)(v, moving, fixed)) == pytest.approx(eager_loss, rel=1e-5)


@pytest.mark.slow
def test_vmap_over_a_batch_of_pairs(pair, getkey):
    moving, fixed = pair
    velocities = jnp.stack([smooth_field(getkey(), SHAPE, 0.8) for _ in range(3)])
    movings = jnp.stack([moving, fixed, moving])
    fixeds = jnp.stack([fixed, moving, moving])
    batched = jax.vmap(jax.value_and_grad(pair_loss))(velocities, movings, fixeds)
    for i in range(3):
        value, grad = jax.value_and_grad(pair_loss)(velocities[i], movings[i], fixeds[i])
        assert float(batched[0][i]) == pytest.approx(float(value), rel=1e-5)
        np.testing.assert_allclose(batched[1][i], grad, atol=1e-6 * float(jnp.abs(grad).max()) + 1e-9)
    dets = jax.vmap(transforms.jacobian_determinant)(jax.vmap(transforms.integrate_velocity, (0, None))(velocities, 5))
    assert dets.shape == (3, *SHAPE)


def test_integrate_constant_velocity_is_itself(getkey):
    # Scaling and squaring of a constant field returns that field (every sample reads the same vector).
    v = jnp.broadcast_to(jnp.array([0.7, -1.3, 0.2]), (*SHAPE, 3))
    np.testing.assert_allclose(transforms.integrate_velocity(v, 7), v, atol=1e-5)


def test_compose_and_jacobian_of_affine_fields():
    # For affine maps trilinear interpolation is exact, so composition and Jacobian are analytic.
    grid = transforms.voxel_grid(SHAPE)
    a = jnp.array([[0.05, 0.02, 0.0], [0.0, -0.04, 0.03], [0.01, 0.0, 0.02]])
    b = jnp.array([[-0.03, 0.0, 0.01], [0.02, 0.05, 0.0], [0.0, 0.01, -0.02]])
    centred = grid - 7.5
    da = centred @ a.T
    db = centred @ b.T
    composed = transforms.compose_fields(da, db)  # p -> q = p + db(p) -> q + da(q)
    expect = centred @ ((jnp.eye(3) + a) @ (jnp.eye(3) + b) - jnp.eye(3)).T
    inside = (slice(2, -2),) * 3  # where q stays on the grid
    np.testing.assert_allclose(composed[inside], expect[inside], atol=1e-5)
    det = transforms.jacobian_determinant(da)
    np.testing.assert_allclose(det, np.linalg.det(np.eye(3) + np.asarray(a)), atol=1e-5)
    assert float(transforms.folding_fraction(det)) == 0.0
    fold = transforms.jacobian_determinant(centred @ jnp.diag(jnp.array([-2.0, 0.0, 0.0])))  # x -> -x
    assert float(transforms.folding_fraction(fold)) == 1.0


def test_warp_then_warp_is_compose(pair, getkey):
    """`compose_fields(outer, inner)` against scipy (`_compose_oracle`) on two smooth random fields of
    up to 0.6 voxel: measured 2.6e-7 at most (float32 rounding); the bound 1e-5 is 40 times that.
    Mutations, each run once by monkeypatching `transforms.compose_fields`: the order swapped
    (`compose_fields(inner, outer)`) is 0.31 off and fails; a plain sum (`outer + inner`) is 0.19 off
    and fails. The image check after it (one warp by the composite against two warps in turn) shows
    the two agree, but cannot tell the order (two interpolations against one: measured 2.4e-2 at most
    on a blob of contrast 1; the swapped order gives 4.5e-2, the sum 3.5e-2, both under its 0.06).
    """
    moving, _ = pair
    outer, inner = smooth_field(getkey(), SHAPE, 0.6), smooth_field(getkey(), SHAPE, 0.6)
    composed = transforms.compose_fields(outer, inner)
    assert float(np.abs(np.asarray(composed) - _compose_oracle(outer, inner)).max()) < 1e-5
    once = transforms.warp_image(moving, composed)
    twice = transforms.warp_image(transforms.warp_image(moving, outer), inner)
    inside = (slice(3, -3),) * 3
    assert float(jnp.abs(once - twice)[inside].max()) < 0.06


def test_losses():
    image = blob_image(SHAPE, (8, 8, 8), 4.0)
    assert float(losses.mse(image, image)) == 0.0
    assert float(losses.smoothness(jnp.ones((*SHAPE, 3)))) == 0.0
    shifted = jnp.roll(image, 2, 0)
    assert float(losses.lncc(image, image)) > float(losses.lncc(image, shifted)) + 0.1
    # squared correlation: blind to the sign of the contrast, as ANTs' CC
    assert float(losses.lncc(image, 1.0 - image)) == pytest.approx(float(losses.lncc(image, image)), rel=1e-3)
    assert float(losses.mutual_information(image, image)) > float(
        losses.mutual_information(image, jnp.roll(image, 4, 0))
    )


@pytest.fixture(scope="module")
def network():
    return ilex.load(fixture_path("net_e32_uniform.h5")), np.load(fixture_path("net_e32_uniform.npz"))


def test_network_differentiable_in_its_input(network, getkey):
    model, ref = network
    mov, fix = jnp.asarray(ref["half_mov"][0]), jnp.asarray(ref["half_fix"][0])
    f = jax.jit(lambda x: jnp.mean(jnp.square(model(0.5, x, fix))))
    direction = jax.random.normal(getkey(), mov.shape)
    direction = direction / jnp.sqrt(jnp.mean(jnp.square(direction)))
    auto = float(jnp.vdot(jax.grad(f)(mov), direction))
    h = 3e-3  # float32 differences of this loss: relative error 5e-2 at h = 3e-2, 3e-3 at 3e-3 (measured)
    numeric = float((f(mov + h * direction) - f(mov - h * direction)) / (2 * h))
    assert abs(numeric) > 1e-6 and abs(auto - numeric) <= 0.02 * abs(numeric), (auto, numeric)


@pytest.mark.slow
def test_network_differentiable_in_its_weights(network):
    """The start of fine-tuning in JAX: gradients of a loss with respect to every weight array."""
    model, ref = network
    mov, fix = jnp.asarray(ref["half_mov"][0]), jnp.asarray(ref["half_fix"][0])

    @eqx.filter_jit
    @eqx.filter_grad
    def grads(m):
        return jnp.mean(jnp.square(m(0.5, mov, fix)))

    g = grads(model)
    leaves = [x for x in jax.tree_util.tree_leaves(eqx.filter(g, eqx.is_inexact_array))]
    assert len(leaves) == len(jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))) > 0
    assert all(bool(jnp.isfinite(x).all()) for x in leaves)
    assert sum(float(jnp.abs(x).sum()) for x in leaves) > 0
    # One step down the gradient lowers the loss: the gradient points the right way.
    loss = lambda m: float(jnp.mean(jnp.square(m(0.5, mov, fix))))
    # a step whose first-order decrease is 0.1 % of the loss
    rate = 1e-3 * loss(model) / sum(float(jnp.sum(jnp.square(x))) for x in leaves)
    stepped = jax.tree_util.tree_map(lambda p, d: p - rate * d if eqx.is_inexact_array(p) else p, model, g)
    assert loss(stepped) < loss(model)


@pytest.mark.parametrize("module", ["ilex.transforms.warp", "ilex.transforms.jacobian", "ilex.losses"])
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_api_doc_examples_run():
    """Every Python block of docs/api.md runs as written."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).parent.parent / "docs" / "api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), {})  # noqa: S102  the docs' own examples, run as a reader would
