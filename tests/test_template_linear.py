"""Linear templates (`ilex template -m rigid|affine`): one subject's sessions to their halfway space.

The goal's test: one real head (Colin27, tests/data.py, block-averaged to 3 mm voxels) seen through
five known rigid transforms `Q_j` (session world -> head world, RAS mm), with Gaussian noise and
a gain and gamma of its own per session. The `Q_j`'s logs average to zero, so the truth's halfway
space is the head's own. Everything here that makes the truth or checks the outputs is numpy,
scipy and h5py (never ilex's resampler or matrix readers).

    python -m tests.test_template_linear --figure docs/template_linear.png   # the docs' figure
"""

from __future__ import annotations

import csv
import os

import h5py
import nibabel as nib
import numpy as np
import pytest
from scipy.linalg import expm, logm
from scipy.ndimage import map_coordinates

from ilex.cli.main import main
from ilex.template.linear import halfway, median_image, rigid_part

SESSIONS = 5


def _rotation_log(degrees, translation) -> np.ndarray:
    w = np.deg2rad(np.asarray(degrees, np.float64))
    log = np.zeros((4, 4))
    log[0, 1], log[1, 0] = -w[2], w[2]
    log[0, 2], log[2, 0] = w[1], -w[1]
    log[1, 2], log[2, 1] = -w[0], w[0]
    log[:3, 3] = translation
    return log


def test_rigid_part_keeps_the_rotation_and_where_the_centre_goes():
    rotation = expm(_rotation_log([5.0, -3.0, 8.0], [0, 0, 0]))
    matrix = rotation @ np.diag([1.1, 0.95, 1.02, 1.0])  # a rotation after a stretch along the axes
    matrix[:3, 3] = [3.0, -2.0, 1.0]
    centre = np.array([10.0, -20.0, 5.0])
    rigid = rigid_part(matrix, centre)
    # The polar factor of R S (S symmetric positive) is R.
    np.testing.assert_allclose(rigid[:3, :3], rotation[:3, :3], atol=1e-12)
    np.testing.assert_allclose(rigid[:3, :3] @ centre + rigid[:3, 3], matrix[:3, :3] @ centre + matrix[:3, 3])
    pure = expm(_rotation_log([2.0, 1.0, -4.0], [1.0, 2.0, 3.0]))
    np.testing.assert_allclose(rigid_part(pure, centre), pure, atol=1e-12)


def test_halfway_of_translations_and_of_turns_about_one_axis():
    # Matrices that commute: the correction is the inverse of their log-Euclidean mean, in closed form.
    shifts = [np.array([4.0, 0.0, -2.0]), np.array([-1.0, 3.0, 0.0]), np.array([0.0, 0.0, 5.0])]
    matrices = [np.eye(4) for _ in shifts]
    for m, s in zip(matrices, shifts, strict=True):
        m[:3, 3] = s
    correction, left = halfway(matrices)
    np.testing.assert_allclose(correction[:3, 3], -np.mean(shifts, axis=0), atol=1e-12)
    assert left < 1e-12
    turns = [expm(_rotation_log([0, 0, a], [0, 0, 0])) for a in (10.0, -4.0, 12.0)]
    correction, _ = halfway(turns)
    np.testing.assert_allclose(correction, expm(_rotation_log([0, 0, -6.0], [0, 0, 0])), atol=1e-12)
    # Turns about different axes with shifts do not commute: the mean log of the maps still vanishes.
    mixed = [expm(_rotation_log(r, t)) for r, t in [([8, 0, 0], [5, 0, 0]), ([0, 9, 3], [0, -4, 2]), ([1, 1, -7], 0)]]
    correction, left = halfway(mixed)
    mean = np.mean([np.real(logm(m @ correction)) for m in mixed], axis=0)
    assert np.abs(mean).max() < 1e-10 and left < 1e-12


@pytest.mark.parametrize("count", [4, 5])
def test_median_by_slabs_is_the_median(tmp_path, monkeypatch, count):
    from ilex.template import linear

    rng = np.random.default_rng(count)
    stack = rng.normal(size=(count, 6, 5, 7)).astype(np.float32)
    paths = []
    for k, data in enumerate(stack):
        paths.append(str(tmp_path / f"m{k}.nii"))
        nib.save(nib.Nifti1Image(data, np.eye(4)), paths[-1])
    monkeypatch.setattr(linear, "MEDIAN_SLAB_BYTES", 6 * 5 * 4 * count * 2)  # two slices a slab: 4 slabs
    got = median_image(paths, (6, 5, 7))
    # Even counts: the mean of the two middle values, as np.median on the whole stack.
    np.testing.assert_array_equal(got, np.sort(stack, axis=0)[count // 2] if count % 2 else np.median(stack, axis=0))


# -- the goal: five sessions of one head ----------------------------------------------------------------


def sessions(directory) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, Q (5, 4, 4): session world -> head world, the head's mask points (N, 3) RAS mm)."""
    from tests.data import data_path
    from tests.template_cohort import source

    t1, _, affine = source(data_path("colin27_t1.nii.gz"), data_path("colin27_aal.nii.gz"), step=3, voxel_mm=3.0)
    rng = np.random.default_rng(7)
    logs = [_rotation_log(rng.uniform(-6, 6, 3), rng.uniform(-6, 6, 3)) for _ in range(SESSIONS)]
    logs = [log - np.mean(logs, axis=0) for log in logs]  # the truth's halfway space is the head's own
    qs = np.array([expm(log) for log in logs])
    grid = np.indices(t1.shape).reshape(3, -1).T.astype(np.float64)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    inverse = np.linalg.inv(affine)
    paths = []
    for j, q in enumerate(qs):
        head = (world @ q[:3, :3].T + q[:3, 3]) @ inverse[:3, :3].T + inverse[:3, 3]
        data = np.clip(map_coordinates(t1, head.T, order=3, mode="constant").reshape(t1.shape), 0, None)
        top = np.percentile(data, 99)
        data = (1.0 + 0.15 * j) * top * (data / top) ** (1.0 + 0.05 * (j - 2)) + rng.normal(0, 0.02 * top, data.shape)
        paths.append(os.path.join(directory, f"ses-{j}.nii.gz"))
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), paths[-1])
    mask = t1 > 0.1 * np.percentile(t1, 99)
    points = np.argwhere(mask) @ affine[:3, :3].T + affine[:3, 3]
    return paths, qs, points


def _lta_matrix(path) -> np.ndarray:
    # The LINEAR_RAS_TO_RAS matrix: the 4 rows after the line "1 4 4".
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    start = lines.index("1 4 4") + 1
    return np.array([[float(v) for v in line.split()] for line in lines[start : start + 4]])


_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _itk_to_ras(parameters) -> np.ndarray:
    # ITK maps fixed (template) LPS -> moving (session) LPS, x -> M x + t (centre 0): inverted, flipped.
    itk = np.eye(4)
    itk[:3, :3] = np.reshape(parameters[:9], (3, 3))
    itk[:3, 3] = parameters[9:12]
    return np.linalg.inv(_LPS @ itk @ _LPS)


def _itk_text_matrix(path) -> np.ndarray:
    with open(path, encoding="utf-8") as f:
        line = next(x for x in f if x.startswith("Parameters:"))
    return _itk_to_ras([float(v) for v in line.split()[1:]])


def _h5_matrix(path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        group = f["TransformGroup"]
        assert [k for k in group] == ["0", "1"]  # the composite, then its one affine
        return _itk_to_ras(np.asarray(group["1"]["TransformParameters"]))


def displacement_errors(qs, to_template, points) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per session, mean and max |E_j x - x| over the head's `points`, E_j = Q_j F_j G^-1: the
    composed map head -> template -> session -> head, after taking out the common offset G
    (the log-Euclidean mean of the Q_j F_j: where the template sits against the head); and G."""
    composed = [q @ np.linalg.inv(m) for q, m in zip(qs, to_template, strict=True)]
    common = expm(np.mean([np.real(logm(c)) for c in composed], axis=0))
    means, maxes = [], []
    for c in composed:
        e = c @ np.linalg.inv(common)
        size = np.linalg.norm(points @ e[:3, :3].T + e[:3, 3] - points, axis=1)
        means.append(size.mean())
        maxes.append(size.max())
    return np.array(means), np.array(maxes), common


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sessions")
    paths, qs, points = sessions(directory)
    out = directory / "sub"
    assert main(["template", *paths, "-o", str(out), "-m", "rigid", "--rounds", "2", "-q"]) == 0
    return out, qs, points


@pytest.mark.realdata
@pytest.mark.slow
def test_five_sessions_come_back_to_the_truth_and_none_is_favoured(built):
    """`ilex template -m rigid` (no weights: the optimiser's affine stage, kept rigid; median).
    Measured (3 mm voxels): per session mean 0.11-0.25 mm, max 0.23-0.54 mm; the template's
    offset from the head 0.010 mm at most; the mean of the five written transforms the identity
    to 1e-6 (the LTA's printed digits). Bounds: about twice those (errors), 0.05 mm (offset),
    0.001 degrees and 0.001 mm (the mean)."""
    out, qs, points = built
    ids = [f"ses-{j}" for j in range(SESSIONS)]
    # session RAS -> template RAS, as each file says it
    lta = [_lta_matrix(out / "images" / i / "affine.lta") for i in ids]
    for i, m in zip(ids, lta, strict=True):
        np.testing.assert_allclose(_itk_text_matrix(out / "images" / i / "affine.txt"), m, atol=1e-6)
        np.testing.assert_allclose(_h5_matrix(out / "images" / i / "affine.h5"), m, atol=1e-6)
        # rigid: the linear part is a rotation
        np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-6)
    means, maxes, common = displacement_errors(qs, lta, points)
    assert means.max() < 0.5 and maxes.max() < 1.0, (means, maxes)
    offset = np.linalg.norm(points @ common[:3, :3].T + common[:3, 3] - points, axis=1)
    assert offset.max() < 0.05, offset.max()
    # No session favoured: the log-Euclidean mean of the session -> template maps is the identity.
    mean = np.mean([np.real(logm(m)) for m in lta], axis=0)
    rotation = np.rad2deg(np.abs(mean[:3, :3]).max())
    assert rotation < 1e-3 and np.abs(mean[:3, 3]).max() < 1e-3, (rotation, mean[:3, 3])


@pytest.mark.realdata
@pytest.mark.slow
def test_outputs_and_rounds(built):
    out, _, _ = built
    template = nib.load(out / "template.nii.gz")
    first = nib.load(out.parent / "ses-0.nii.gz")
    np.testing.assert_array_equal(template.affine, first.affine)  # the first image's grid
    assert template.shape == first.shape
    with open(out / "rounds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["round"] for r in rows] == ["0", "1", "2"] and all(r["averaged"] == "5" for r in rows)
    # Round 0's halfway correction moves the first session's space by millimetres; later rounds' by
    # a fraction of a 3 mm voxel (measured 7.5 mm, then 0.10 and 0.12 mm).
    assert float(rows[0]["mean_displacement_mm"]) > 2.0
    assert all(float(r["mean_displacement_mm"]) < 0.5 for r in rows[1:])
    assert all(float(r["mean_similarity"]) > 0.9 for r in rows)
    for j in range(SESSIONS):
        names = sorted(os.listdir(out / "images" / f"ses-{j}"))
        assert names == ["affine.h5", "affine.lta", "affine.txt", "moved.nii.gz"]
    assert (out / "qc" / "summary.csv").is_file() and (out / "qc" / "summary.report.html").is_file()
    # `ilex apply` with the LTA (onto its dst: the template grid) and with the .h5 gives moved.nii.gz
    # (measured: 6e-6 of its maximum; the moved file is float32 like ilex apply's).
    moved = nib.load(out / "images" / "ses-1" / "moved.nii.gz").get_fdata()
    for name in ("affine.lta", "affine.h5"):
        applied = out.parent / f"applied_{name}.nii.gz"
        transform = out / "images" / "ses-1" / name
        assert main(["apply", str(transform), str(out.parent / "ses-1.nii.gz"), str(applied), "-q"]) == 0
        assert np.abs(nib.load(applied).get_fdata() - moved).max() < 1e-4 * np.abs(moved).max()
    assert not (out / "round2").exists()  # a committed round's files go


@pytest.mark.realdata
@pytest.mark.slow
def test_synthmorph_detector_plumbing(built, tmp_path):
    """With -w, SynthMorph's detector runs instead of the optimiser (plumbing only: the reference's
    reduced random-weight detector in tests/fixtures is no registration); without, the optimiser's
    affine stage ran (`built`). Either way the maps' mean log is the identity."""
    import json

    from conftest import fixture_path

    out, _, _ = built
    assert json.loads((out / "qc" / "ses-0" / "qc.json").read_text())["model"] == "optimize-affine"
    ran = json.loads((out / "qc" / "summary.json").read_text())["settings"]["method"]  # the method object's repr
    assert ran.startswith("OptimizeAffineMethod(hyper=0.5")
    paths = [str(out.parent / f"ses-{j}.nii.gz") for j in range(3)]
    weights = fixture_path("affine_e64.h5")
    args = ["template", *paths, "-o", str(tmp_path / "t"), "-m", "affine", "-w", weights, "-e", "64", "--rounds", "1"]
    assert main([*args, "--average", "mean", "-q"]) == 0
    assert json.loads((tmp_path / "t" / "qc" / "ses-0" / "qc.json").read_text())["model"] == "affine"
    lta = [_lta_matrix(tmp_path / "t" / "images" / f"ses-{j}" / "affine.lta") for j in range(3)]
    assert np.abs(np.mean([np.real(logm(m)) for m in lta], axis=0)).max() < 1e-6


def _figure(path: str) -> None:  # pragma: no cover  (the docs' figure)
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory() as directory:
        paths, qs, points = sessions(directory)
        out = os.path.join(directory, "sub")
        assert main(["template", *paths, "-o", out, "-m", "rigid", "--rounds", "2", "-q"]) == 0
        lta = [_lta_matrix(os.path.join(out, "images", f"ses-{j}", "affine.lta")) for j in range(SESSIONS)]
        means, maxes, _ = displacement_errors(qs, lta, points)
        images = [nib.load(p).get_fdata() for p in paths]
        template = nib.load(os.path.join(out, "template.nii.gz")).get_fdata()
        moved = [nib.load(os.path.join(out, "images", f"ses-{j}", "moved.nii.gz")).get_fdata() for j in range(SESSIONS)]
    z = images[0].shape[2] // 2
    fig, axes = plt.subplots(2, SESSIONS + 1, figsize=(2.0 * (SESSIONS + 1), 4.6))
    for j in range(SESSIONS):
        axes[0, j].imshow(images[j][:, :, z].T, origin="lower", cmap="gray")
        axes[0, j].set_title(f"session {j}", fontsize=9)
        axes[1, j].imshow(moved[j][:, :, z].T, origin="lower", cmap="gray")
        axes[1, j].set_title(f"on the template\n{means[j]:.2f} / {maxes[j]:.2f} mm", fontsize=8)
    axes[0, -1].imshow(template[:, :, z].T, origin="lower", cmap="gray")
    axes[0, -1].set_title("template (median)", fontsize=9)
    spread = np.std([m[:, :, z] / np.percentile(m, 99) for m in moved], axis=0)  # each in its 99th percentile
    axes[1, -1].imshow(spread.T, origin="lower", cmap="magma", vmin=0, vmax=0.1)
    axes[1, -1].set_title("std. of the moved (0-0.1)", fontsize=9)
    for a in axes.ravel():
        a.set_axis_off()
    fig.suptitle("ilex template -m rigid: five sessions of one head (3 mm); error mean / max over the head")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":  # pragma: no cover
    import sys

    _figure(sys.argv[sys.argv.index("--figure") + 1])
