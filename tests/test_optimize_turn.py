"""`-m optimize`'s affine stage and large turns: the search over turns at the coarsest level
(`ilex.optimize.affine.search_rotation`) before the optimisation, which from the centres of mass
alone could turn the head by about 12 degrees at most.

Tolerances are a small multiple of what was measured (in the comments), on the 2-core CPU machine
this was written on.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from known_affine import affine_error_mm, colin_through
from scipy.spatial.transform import Rotation

from ilex.optimize.affine import (
    SEARCH_DEGREES,
    optimise_affine,
    rotation_candidates,
    search_rotation,
    turned_starts,
)
from ilex.optimize.smoothing import pyramid
from ilex.registration.methods import OptimizeAffineMethod


def test_the_candidates_are_every_combination_of_the_angles_identity_first():
    turns = rotation_candidates()
    assert turns.shape == (len(SEARCH_DEGREES) ** 3, 3, 3)
    np.testing.assert_array_equal(turns[0], np.eye(3))
    # Against SciPy's extrinsic x, then y, then z Euler turns, in the same order.
    combos = [
        (x, y, z) for x in SEARCH_DEGREES for y in SEARCH_DEGREES for z in SEARCH_DEGREES if (x, y, z) != (0, 0, 0)
    ]
    np.testing.assert_allclose(turns[1:], Rotation.from_euler("xyz", combos, degrees=True).as_matrix(), atol=1e-12)


def test_a_turned_start_keeps_the_pivot_where_the_start_sends_it():
    start = np.eye(4)
    start[:3, 3] = [3.0, -2.0, 5.0]
    pivot = np.array([10.0, 20.0, 30.0])
    turns = rotation_candidates((-30.0, 0.0, 30.0))
    for m, r in zip(turned_starts(start, pivot, turns), turns, strict=True):
        np.testing.assert_allclose(m @ [*pivot, 1], [*(pivot + start[:3, 3]), 1], atol=1e-12)
        np.testing.assert_allclose(m[:3, :3], r, atol=1e-12)


def test_the_search_keeps_the_start_unless_a_turn_is_clearly_better():
    start, pivot = np.eye(4), np.zeros(3)
    target = turned_starts(start, pivot, rotation_candidates())[40]

    def similarity(m, best=1.0):
        # Highest at `target`, 0.9 elsewhere except 0.95 at the start.
        if np.allclose(m, target, atol=1e-6):
            return best
        return 0.95 if np.allclose(m, start) else 0.9

    chosen, found = search_rotation(similarity, start, pivot)
    np.testing.assert_allclose(chosen, target)
    assert found["mi"] == 1.0 and found["mi_unturned"] == 0.95 and found["candidates"] == 125
    np.testing.assert_allclose(turned_starts(start, pivot, rotation_candidates())[40][:3, :3], chosen[:3, :3])
    # A gain within the margin (2 %) keeps the start itself.
    chosen, found = search_rotation(lambda m: similarity(m, best=0.96), start, pivot)
    assert np.array_equal(chosen, start) and found["degrees"] == [0.0, 0.0, 0.0]


def _blob(shape=(40, 48, 40)) -> np.ndarray:
    # An ellipsoidal "head" with an off-centre bright "ventricle", no symmetry a turn could mimic.
    g = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    c = (np.array(shape) - 1) / 2
    head = (((g - c) / [14, 18, 13]) ** 2).sum(-1) < 1
    inner = (((g - c - [4, 6, -3]) / [4, 7, 3]) ** 2).sum(-1) < 1
    return (0.5 * head + 0.5 * inner).astype(np.float32)


def test_the_search_runs_only_when_the_coarse_level_does_not_settle_and_keeps_only_a_better_end():
    # An unturned pair: the coarse level settles (MI stops rising), so there is no search at all.
    fix = _blob()
    mov = np.roll(fix, (2, -1, 1), axis=(0, 1, 2))
    pm, pf = pyramid(jnp.asarray(mov), (2, 4)), pyramid(jnp.asarray(fix), (2, 4))
    profile = {}
    a = optimise_affine(pm, pf, np.eye(4), fix.shape, scales=(4, 2), voxel_size=2.0, profile=profile)
    b = optimise_affine(pm, pf, np.eye(4), fix.shape, scales=(4, 2), voxel_size=2.0, search=False)
    assert "affine turn search" not in profile and profile["affine 8 mm"]["iterations"] < 200, profile
    np.testing.assert_array_equal(a, b)
    # With the stopping rule off (tolerance -1) the coarse level runs out, so the search runs. On
    # this 10-voxel coarse grid a 15-degree turn beats the unturned start's MI by more than the
    # margin before optimisation (measured: 0, 15, 0 degrees), but ends the coarse level lower: the
    # unturned start is kept and the answer is the one without the search, bit for bit.
    profile = {}
    a = optimise_affine(pm, pf, np.eye(4), fix.shape, scales=(4, 2), voxel_size=2.0, tolerance=-1.0, profile=profile)
    b = optimise_affine(pm, pf, np.eye(4), fix.shape, scales=(4, 2), voxel_size=2.0, tolerance=-1.0, search=False)
    found = profile["affine turn search"]
    assert found["degrees"] != [0.0, 0.0, 0.0] and found["mi"] > 1.02 * found["mi_unturned"], found
    assert not found["kept"] and profile["affine 8 mm, turned"]["iterations"] == 200, profile
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.realdata
def test_a_head_turned_25_degrees_is_recovered_by_the_affine_stage():
    # Colin27 (whole head, 1 mm) seen through a turn of 25 degrees about an oblique axis and a
    # shift. The affine stage alone must find the known map. Measured over the head: 0.12 mm on
    # average, 0.25 mm at most (the search tried 15, -15, 15 degrees about x, y, z); without the
    # search (the code before it) 5.9 mm on average and 12.5 mm at most: the coarse level's 200
    # iterations could not turn the head that far.
    turn = Rotation.from_rotvec(np.deg2rad(25.0) * np.array([2.0, -1.0, 1.0]) / np.sqrt(6)).as_matrix()
    colin, fixed, known = colin_through(turn, [3.0, -2.0, 4.0])
    from ilex.registration.pipeline import register

    result = register(colin, fixed, method=OptimizeAffineMethod())
    error = affine_error_mm(result.affine, known, fixed, every=5)
    assert error.mean() < 0.5 and error.max() < 1.0, (error.mean(), error.max())


def test_a_grid_too_small_for_a_coarse_copy_keeps_the_start():
    # No affine level at all (`scales` empty, as `_affine_scales` gives below 16 voxels): the start
    # comes back, and the search has nothing to search on (the code before it did the same).
    start = np.eye(4)
    start[:3, 3] = [1.0, -2.0, 0.5]
    fix = jnp.asarray(_blob((12, 12, 12)))
    matrix = optimise_affine({}, {1: fix}, start, fix.shape, scales=(), profile=(profile := {}))
    np.testing.assert_allclose(matrix, start, atol=1e-6)
    assert profile == {}
