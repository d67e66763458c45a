"""The affine stage: centres of mass, then 12 parameters optimised on coarse copies of the images,
with a search over turns where the coarsest copy's optimisation does not settle.

Matrices map fixed-network voxels to moving-network voxels, as `NetworkTransform.matrix`.
The parameters are `p` (12,): linear part `I + 0.2 p[:9]` acting about the fixed grid's centre
and a translation of `20 p[9:]` mm on top of the centres-of-mass shift, so that Adam's step of
about `lr` per parameter moves the linear part by `0.2 lr` and the origin by `20 lr` mm, whatever
the grid's voxel size.
"""

from __future__ import annotations

import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Float

from .._custom_types import AnyArray
from .._programs import program
from ..transforms.compose import apply_matrix
from ..transforms.integrate import voxel_grid
from ..transforms.interpolate import interpolate_clamped, interpolate_clamped_with_gradient
from .convergence import Convergence, LevelTimer
from .similarity import masked_mutual_information, mutual_information

TRANSLATION_UNIT_MM = 20.0
# The linear part moves 5x slower than the parameters: MI on images with a small field of view in
# a large cube otherwise rewards shrinking the moving image (seen with avg152 as the fixed image).
LINEAR_UNIT = 0.2
# Level voxel size (mm) -> (maximum iterations, Adam's first learning rate, cosine-decayed to a
# tenth over the level so that the parameters settle): the coarse level finds the pose, the next
# one polishes it. A level of another size takes the nearest entry (`schedule`). The coarse level
# may take 200 iterations (about 1 ms each at 1 mm): with 80, the decaying steps could not turn
# the linear part by more than about 5 degrees, and a 7 degree tilt of Colin27 was left 3.4 mm
# short (0.10 mm with 200; it stopped after 108, measured). Levels stop early once MI settles.
SCHEDULE = {8: (200, 0.01), 4: (30, 0.003), 2: (30, 0.002)}
# The turns tried at the coarsest level when it does not settle (`search_rotation`): every combination
# of these angles (degrees) about the grid's three axes, 125 in all, about the fixed image's centre
# of mass. Optimised from centres of mass alone, the coarse level turned the linear part by about
# 12 degrees at most in its 200 iterations: MNI152 turned 22 degrees was left 4.8 mm off (mean
# over the head; 10.8 mm at most). 15-degree steps leave any turn within 7.5 degrees of a tried
# one about each axis, which the coarse level then recovers (a 7-degree tilt: 0.10 mm, above).
SEARCH_DEGREES = (-30.0, -15.0, 0.0, 15.0, 30.0)
# A turn is tried only when its MI beats the centres of mass's by this share (and then kept only if
# it still does after the coarse level, `optimise_affine`). On the bench's ten tuning cases the
# best turned candidate's MI was 0.25-0.94 of the unturned one's, except on mni_rotate (1.42,
# the turn it needs); see docs/peers.md.
SEARCH_MARGIN = 0.02


def schedule(level_mm: float) -> tuple[int, float]:
    """`SCHEDULE`'s entry nearest to a level of `level_mm` mm voxels (on a log scale; ties: coarser)."""
    key = min(SCHEDULE, key=lambda k: (abs(np.log2(k / level_mm)), -k))
    return SCHEDULE[key]


def centre_of_mass(image: jax.Array) -> np.ndarray:
    """Intensity-weighted mean voxel position of `image` (3,), float64."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in image.shape], indexing="ij"), -1)
    w = np.asarray(image, np.float64)
    return (grid * w[..., None]).reshape(-1, 3).sum(0) / max(w.sum(), 1e-12)


def moments_matrix(mov: jax.Array, fix: jax.Array, scale: int = 1) -> np.ndarray:
    """Fixed-network voxel -> moving-network voxel: the translation that matches the centres of
    mass of `mov` and `fix`, copies `scale` times coarser than the network grid."""
    matrix = np.eye(4)
    matrix[:3, 3] = scale * (centre_of_mass(mov) - centre_of_mass(fix))
    return matrix


def rotation_candidates(degrees=SEARCH_DEGREES) -> np.ndarray:
    """The turns (n, 3, 3), float64, about the grid's axes x, then y, then z by every combination of
    `degrees`; the identity first."""
    turns = [np.eye(3)]
    for ax in degrees:
        for ay in degrees:
            for az in degrees:
                if (ax, ay, az) == (0, 0, 0):
                    continue
                a = np.deg2rad([ax, ay, az])
                c, s = np.cos(a), np.sin(a)
                rx = np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
                ry = np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
                rz = np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
                turns.append(rz @ ry @ rx)
    return np.stack(turns)


def turned_starts(start: np.ndarray, pivot: np.ndarray, turns: np.ndarray) -> np.ndarray:
    """`start` (4x4) after each of `turns` (n, 3, 3) about the fixed voxel `pivot`: (n, 4, 4),
    float64. Fixed voxel x -> `start`(R (x - pivot) + pivot); with `start` matching the centres of
    mass and `pivot` the fixed one, the centres of mass stay matched."""
    local = np.tile(np.eye(4), (len(turns), 1, 1))
    local[:, :3, :3] = turns
    local[:, :3, 3] = pivot - turns @ pivot
    return np.asarray(start, np.float64) @ local


def search_rotation(
    similarity,
    start: np.ndarray,
    pivot: np.ndarray,
    *,
    degrees=SEARCH_DEGREES,
    margin: float = SEARCH_MARGIN,
) -> tuple[np.ndarray, dict]:
    """The start of the affine optimisation: `start` (fixed-network voxel -> moving-network voxel,
    the centres of mass), or `start` turned about the fixed voxel `pivot` by the one of
    `rotation_candidates(degrees)` whose `similarity` (a function of a float32 4x4 start matrix
    returning a scalar, higher is better) is highest, if that exceeds the unturned one's by more
    than `margin` of it. Returns the matrix (float64; `start` itself when unturned) and what was
    found (`degrees`: the chosen turn's angles about x, y, z; `mi`, `mi_unturned`, `candidates`)."""
    starts = turned_starts(start, pivot, rotation_candidates(degrees))
    # Every candidate is dispatched before any value is read, so that the device never waits on
    # the host between them.
    values = [similarity(np.asarray(m, np.float32)) for m in starts]
    mi = np.array([float(v) for v in values])
    best = int(np.argmax(mi))
    found = {"degrees": [0.0, 0.0, 0.0], "mi": float(mi[0]), "mi_unturned": float(mi[0]), "candidates": len(starts)}
    if best == 0 or mi[best] <= mi[0] + margin * abs(mi[0]):
        return np.asarray(start, np.float64), found
    combos = [(ax, ay, az) for ax in degrees for ay in degrees for az in degrees if (ax, ay, az) != (0, 0, 0)]
    found |= {"degrees": [float(a) for a in combos[best - 1]], "mi": float(mi[best])}
    return starts[best], found


def params_to_matrix(params, start: Float[AnyArray, "4 4"], centre, translation_unit: float = TRANSLATION_UNIT_MM):
    """The 4x4 matrix (jnp, float32) of `params` composed after the start matrix `start`.

    `centre`: the fixed grid's centre (voxels; one number for a cube, else three);
    `translation_unit`: `TRANSLATION_UNIT_MM` in the grid's voxels."""
    lin = jnp.eye(3) + LINEAR_UNIT * params[:9].reshape(3, 3)
    c = jnp.broadcast_to(jnp.asarray(centre, jnp.float32), (3,))
    t = translation_unit * params[9:] + c - lin @ c
    top = jnp.concatenate([lin, t[:, None]], axis=1)
    local = jnp.concatenate([top, jnp.array([[0.0, 0.0, 0.0, 1.0]])], axis=0)
    return jnp.asarray(start, jnp.float32) @ local


# The affine stage's answer as one program (eagerly, its dozen operations were each compiled on a
# process's first call).
_final_matrix = program(params_to_matrix, static_argnums=(2, 3))


def level_matrix(matrix, scale: int):
    """`matrix` (full-resolution voxels) acting on the voxels of a grid `scale` times coarser."""
    s = jnp.diag(jnp.array([scale, scale, scale, 1.0], jnp.float32))
    inv = jnp.diag(jnp.array([1.0 / scale, 1.0 / scale, 1.0 / scale, 1.0], jnp.float32))
    return inv @ matrix @ s


@functools.cache
def _optimizer(learning_rate: float, iterations: int):
    return optax.adam(optax.cosine_decay_schedule(learning_rate, iterations, alpha=0.1))


def cost_weight(fix_weight, mov_weight, coords):
    """Where the similarity is measured, on the fixed grid: the fixed mask (0/1) times the moving
    mask where each fixed voxel lands, `coords`, counted only when all eight voxels the trilinear
    read draws on are in it; None for no mask. The masks choose voxels, they are not optimised:
    no gradient flows through the moving one.

    All eight, not the trilinear weight: a sample that draws on an excluded voxel (a lesion's
    intensity) would be pushed away from it, which shrinks the region the moving mask excludes
    in fixed space, which brings more samples to its edge (measured on tests/test_masks.py's
    lesion: the excluded region shrank by a fifth and Dice within 16 mm of the lesion fell
    below the unmasked run's, 0.9497 against 0.9530; 0.9737 with all eight)."""
    weight = None if fix_weight is None else fix_weight
    if mov_weight is not None:
        inside = interpolate_clamped(mov_weight, coords) >= 1.0 - 1e-6
        moved = jax.lax.stop_gradient(inside.astype(jnp.float32))
        weight = moved if weight is None else weight * moved
    return weight


@program
def _four_channels(volume):
    """`volume` repeated in 4 channels, what `_affine_step` samples (once per level)."""
    return jnp.repeat(volume[..., None], 4, axis=-1)


def _level_coords(params, start, grid, scale, centre, unit):
    return apply_matrix(level_matrix(params_to_matrix(params, start, centre, unit), scale), grid)


@program(static_argnames=("scale", "centre", "unit"))
def _affine_sample(params, start, mov4, grid, fix_weight=None, mov_weight=None, *, scale, centre, unit):
    # The moving image where the fixed grid lands and its derivative there, materialised once
    # (`interpolate_clamped_with_gradient`); with masks, where the similarity counts (`cost_weight`).
    coords = _level_coords(params, start, grid, scale, centre, unit)
    sampled = interpolate_clamped_with_gradient(mov4, coords)
    if fix_weight is None and mov_weight is None:
        return sampled
    return sampled, cost_weight(fix_weight, mov_weight, coords)


@program(static_argnames=("bins",))
def _affine_similarity(fix, sampled, weight=None, *, bins):
    # MI and its derivative with respect to the moved intensities (`sampled`'s first channel; taken
    # here, not by an eager slice on the host each step), on its own: fused with the sampling,
    # XLA's CPU backend ran the histogram's scatters several times slower.
    moved = sampled[..., 0]
    if weight is None:  # no mask: exactly the unmasked program
        return jax.value_and_grad(lambda m: mutual_information(fix, m, bins))(moved)
    return jax.value_and_grad(lambda m: masked_mutual_information(fix, m, weight, bins))(moved)


@program(static_argnames=("scale", "centre", "unit", "learning_rate", "iterations"))
def _affine_update(
    params, opt_state, start, grid, sampled, d_similarity, *, scale, centre, unit, learning_rate, iterations
):
    # The chain rule by hand: -d MI / d moved times d moved / d coordinates, pulled back to the
    # parameters through the (linear) map from parameters to coordinates.
    cotangent = -d_similarity[..., None] * sampled[..., 1:]
    _, pull_back = jax.vjp(lambda p: _level_coords(p, start, grid, scale, centre, unit), params)
    (grad,) = pull_back(cotangent)
    updates, opt_state = _optimizer(learning_rate, iterations).update(grad, opt_state)
    return optax.apply_updates(params, updates), opt_state


def _affine_step(
    params,
    opt_state,
    start,
    fix,
    mov4,
    grid,
    fix_weight=None,
    mov_weight=None,
    *,
    scale,
    centre,
    unit,
    learning_rate,
    iterations,
    bins,
):
    """One Adam step of the parameters on -MI: (parameters, optimiser state, MI before the step).

    Three programs rather than one (`_affine_sample`, `_affine_similarity`, `_affine_update`):
    as one, XLA's CPU backend split the trilinear reads into separate gathers and ran MI's
    scatters on the unfused sampling (1.83 ms a step on 14k voxels against 1.02 ms, 6.3 against
    5.3 ms on 110k). `mov4`: the moving image in 4 channels (`_four_channels`)."""
    geometry = {"scale": scale, "centre": centre, "unit": unit}
    if fix_weight is None and mov_weight is None:
        sampled, weight = _affine_sample(params, start, mov4, grid, **geometry), None
    else:
        sampled, weight = _affine_sample(params, start, mov4, grid, fix_weight, mov_weight, **geometry)
    value, d_similarity = _affine_similarity(fix, sampled, weight, bins=bins)
    params, opt_state = _affine_update(
        params,
        opt_state,
        start,
        grid,
        sampled,
        d_similarity,
        **geometry,
        learning_rate=learning_rate,
        iterations=iterations,
    )
    return params, opt_state, value


def optimise_affine(
    pyramid_mov: dict[int, jax.Array],
    pyramid_fix: dict[int, jax.Array],
    start: np.ndarray,
    shape: int | tuple[int, int, int],
    *,
    scales=(8, 4),
    voxel_size: float = 1.0,
    bins: int = 32,
    tolerance: float = 1e-4,
    progress: bool = False,
    profile: dict | None = None,
    mask_fix: dict[int, jax.Array] | None = None,
    mask_mov: dict[int, jax.Array] | None = None,
    search: bool = True,
) -> np.ndarray:
    """Affine matrix (fixed-network voxel -> moving-network voxel, float64) maximising MI.

    `pyramid_*[s]` is the image `s` times coarser than the fixed network grid of `shape` (an int:
    a cube) and `voxel_size` mm; `scales` lists the levels, coarse to fine, each with the maximum
    iterations and Adam learning rate `schedule` gives its voxel size. Each level stops early when
    MI rose by less than `tolerance` (relative) over the last iterations (`Convergence`).
    `mask_*[s]` (optional, on the pyramids' grids, weights in [0, 1]) are cost-function masks:
    MI is measured only where the fixed mask and the moving mask read through the matrix are
    non-zero (`cost_weight`); without them the computation is exactly the unmasked one.
    `search`: when the coarsest level runs out of iterations before MI settles, try
    `search_rotation`'s turns of `start` there (its finding goes to `profile["affine turn
    search"]`); where none is kept the answer is the same as without the search.
    """
    from tqdm.auto import tqdm

    params = jnp.zeros(12, jnp.float32)
    centre = (shape - 1) / 2.0 if isinstance(shape, int) else tuple((n - 1) / 2.0 for n in shape)
    unit = TRANSLATION_UNIT_MM / voxel_size
    grids = {scale: voxel_grid(pyramid_fix[scale].shape) for scale in scales}
    moving4 = {scale: _four_channels(pyramid_mov[scale]) for scale in scales}

    def step(params, opt_state, start32, scale, iterations, lr):
        return _affine_step(
            params,
            opt_state,
            start32,
            pyramid_fix[scale],
            moving4[scale],
            grids[scale],
            None if mask_fix is None else mask_fix[scale],
            None if mask_mov is None else mask_mov[scale],
            scale=scale,
            centre=centre,
            unit=unit,
            learning_rate=lr,
            iterations=iterations,
            bins=bins,
        )

    def level(params, start32, scale, name):
        # One level from `params` about `start32`: the parameters, the last MI, and whether MI
        # settled (`Convergence`) before the level's iterations ran out.
        iterations, lr = schedule(scale * voxel_size)
        opt_state = _optimizer(lr, iterations).init(params)
        stop = Convergence(tolerance)
        value = -np.inf
        with (
            tqdm(total=iterations, desc=name, file=sys.stderr, disable=None if progress else True, leave=False) as bar,
            LevelTimer(profile, name) as count,
        ):
            for _ in range(iterations):
                params, opt_state, value = step(params, opt_state, start32, scale, iterations, lr)
                value = float(value)
                count()
                bar.update()
                bar.set_postfix(mi=f"{value:.4f}")
                if stop(value):
                    return params, value, True
        return params, value, False

    start32 = np.asarray(start, np.float32)
    if not scales:  # a grid too small for any coarse copy (`scales` empty): the start as it is
        return np.asarray(_final_matrix(params, start32, centre, unit), np.float64)
    coarse = scales[0]
    name = f"affine {coarse * voxel_size:.3g} mm"
    params, value, settled = level(params, start32, coarse, name)
    if search and not settled:
        # The coarse level ran out of iterations still climbing: the pose may be further than it
        # can turn (about 12 degrees in 200 iterations). Try the turns; one that beats the centres
        # of mass's MI by the margin is optimised at the coarse level too, and kept only if it
        # ends there higher: on a coarse grid of few voxels an unturned pair's MI was seen to
        # prefer a 15-degree turn before optimisation, though not after it (the blob of
        # tests/test_optimize_turn.py). Each candidate's MI is the coarse level's own first
        # step's (its update discarded), so the search compiles nothing of its own.
        t0 = time.perf_counter()
        iterations, lr = schedule(coarse * voxel_size)
        zero = jnp.zeros(12, jnp.float32)
        opt_state = _optimizer(lr, iterations).init(zero)
        turned, found = search_rotation(
            lambda m: step(zero, opt_state, m, coarse, iterations, lr)[2],
            start,
            coarse * centre_of_mass(pyramid_fix[coarse]),
        )
        found = {"seconds": time.perf_counter() - t0, **found, "kept": False}
        if found["degrees"] != [0.0, 0.0, 0.0]:
            turned32 = np.asarray(turned, np.float32)
            p, v, _ = level(zero, turned32, coarse, name + ", turned")
            if v > value:
                params, start32, found["kept"] = p, turned32, True
        if profile is not None:
            profile["affine turn search"] = found
    for scale in scales[1:]:
        params, _, _ = level(params, start32, scale, f"affine {scale * voxel_size:.3g} mm")
    return np.asarray(_final_matrix(params, start32, centre, unit), np.float64)
