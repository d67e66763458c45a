"""bench/cases.py's wider cases (issue 34): each prepares the pair it says, from the pinned real images.

The checks recompute what a case promises with their own arithmetic (nearest-neighbour label lookup
through the true map, the turn fitted to the true map, the cavity's ball), not with bench/cases.py's
helpers. Two of the six cases are prepared (about 10 s each on the 2-core machine, idle): the 0.5 mm
macaque with a changed contrast and noise, and with a resection; the turns of all six are checked
against SciPy's.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import cases  # bench/ is not a package
from data import data_path


def test_held_out_is_half_the_new_cases_and_part_of_the_bench():
    """Mutation: a held-out name missing from CASES, or fewer than half of WIDER held out, fails."""
    assert set(cases.HELD_OUT) <= set(cases.CASES)
    assert set(cases.WIDER) <= set(cases.CASES)
    assert len(set(cases.HELD_OUT) & set(cases.WIDER)) * 2 >= len(cases.WIDER)


def _prepare(case, tmp_path):
    names = ("inia19_t1_brain.nii.gz", "inia19_neuromaps.nii.gz", "colin27_t1.nii.gz", "colin27_aal.nii.gz")
    names += ("mni2009a_t1.nii.gz", "mni2009a_gm.nii.gz", "mni2009a_wm.nii.gz")
    paths = [data_path(n) for n in names]  # every image the cases read: skip (or fail in CI) if one is missing
    data = os.path.dirname(paths[0])
    return cases.prepare(case, data, str(tmp_path), 8.0, 0)


def _world(shape, affine):
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), -1)
    return grid @ affine[:3, :3].T.astype(np.float32) + affine[:3, 3].astype(np.float32)


def _labels_at(spec, world):
    moving, affine = cases.load(spec["moving_labels"])
    vox = np.rint((world - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).astype(int)
    inside = np.all((vox >= 0) & (vox < moving.shape), axis=-1)
    vox = np.where(inside[..., None], vox, 0)
    return np.where(inside, moving[vox[..., 0], vox[..., 1], vox[..., 2]], 0).astype(np.int16)


def test_turns_are_the_stated_angles():
    """`rotation` against SciPy's extrinsic x-y-z Euler turn (an independent implementation), and the
    large-turn cases turn by at least 15 degrees (measured: mni_rotate 22.3, inia19_rotate 19.9,
    mni_rotate_contrast 19.6). Mutation: rx and rz swapped in `rotation` fails here."""
    from scipy.spatial.transform import Rotation

    for case, (_, degrees, *_) in cases.WIDER.items():
        expected = Rotation.from_euler("xyz", degrees, degrees=True)
        assert np.allclose(cases.rotation(degrees), expected.as_matrix(), atol=1e-12), case
        if "rotate" in case:
            assert np.rad2deg(expected.magnitude()) >= 15, case


@pytest.mark.realdata
@pytest.mark.parametrize(("case", "turn_degrees"), [("inia19_affine_contrast", 5.0), ("inia19_resection", 4.2)])
def test_wider_case_is_what_it_says(case, turn_degrees, tmp_path):
    """The fixed labels are the moving labels through the true map (measured: all voxels agree
    without a cavity, 0.999 with one, where the cavity's labels were removed; asked: 0.995 outside
    it); the map's linear part turns by the stated angle (fitted: within 0.2 degrees of the turn
    the case asks for; asked 1 degree, the warp on top bending the fit); the labels keep their
    detail (NeuroMaps: 724 of 724) at the native 0.5 mm. Mutation: a truth stored as x - y instead
    of y - x, or the score mask left out of `score`, fails here."""
    spec = _prepare(case, tmp_path)
    fixed, affine = cases.load(spec["fixed"])
    fixed_labels, _ = cases.load(spec["fixed_labels"])
    truth = np.load(spec["true_warp"])
    assert np.allclose(np.abs(np.diag(affine)[:3]), 0.5)
    assert len(np.unique(fixed_labels)) - 1 >= 700

    world = _world(fixed.shape, affine)
    keep = np.load(spec["score_mask"]) if "score_mask" in spec else np.ones(fixed.shape, bool)
    through = _labels_at(spec, world + truth)
    agree = np.mean(through[keep] == fixed_labels[keep])
    assert agree >= 0.995, agree

    head = np.load(spec["head_mask"])
    x = world[head][::50]
    y = x + truth[head][::50]
    lin = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)[0][:3].T
    u, _, vt = np.linalg.svd(lin)
    angle = np.rad2deg(np.arccos(np.clip((np.trace(u @ vt) - 1) / 2, -1, 1)))
    assert abs(angle - turn_degrees) < 1.0, angle

    if case == "inia19_affine_contrast":
        # T2-like: the fixed image is dark where the moved T1 is bright, inside the brain.
        vox = (world + truth - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
        moved_t1 = cases._sample(cases.load(spec["moving"])[0], np.moveaxis(vox, -1, 0), 1)
        brain = (fixed > 0) & (moved_t1 > 0)
        assert np.corrcoef(fixed[brain], moved_t1[brain])[0, 1] < -0.3
    if case == "inia19_resection":
        # The cavity: a 5 mm ball about (18, -10, 8) mm is empty in the fixed image, full of brain in
        # the moving one, and the score leaves it out with a 2 mm margin.
        distance = np.linalg.norm(world - np.array([18.0, -10.0, 8.0], np.float32), axis=-1)
        assert np.all(fixed[distance < 5] == 0) and np.all(fixed_labels[distance < 5] == 0)
        assert np.mean(_labels_at(spec, world[distance < 4]) > 0) > 0.9
        assert not keep[distance < 7].any() and keep[distance > 7.5].all()
        # A perfect answer scores 1 outside the cavity (measured: 1.0); unmasked, the cavity's labels
        # would count against it (measured: 0.99971).
        out = str(tmp_path / "perfect")
        np.save(out + "_warp.npy", truth)
        np.save(out + "_labels.npy", through)
        scored = cases.score(spec, out)
        assert scored["dice_mean"] > 0.99995 and scored["warp_error_mean_mm"] < 1e-4, scored
