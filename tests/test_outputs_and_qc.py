"""Safe outputs (atomic, all-or-nothing, bit-identical reruns) and the QC report."""

import gzip
import json
import os
import pathlib
import stat
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import fixture_path
from data import data_path
from PIL import Image as PILImage

from ilex._atomic import atomic_directory, atomic_file, output_batch
from ilex.cli.main import main
from ilex.image.io import save_image
from ilex.transforms.jacobian import folding_fraction, jacobian_determinant

pytestmark = pytest.mark.slow  # the full pipeline or many processes: CI runs it, `-m "not slow"` skips it

E32 = fixture_path("net_e32_uniform.h5")


def _oblique_affine():
    angle = 0.3
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.9, 1.3, 2.0])
    affine[:3, 3] = [-20, 15, 7]
    return affine


def _linear_warp(matrix, affine, shape=(12, 14, 10)):
    """RAS displacement of the map x -> matrix x on a grid, i.e. u(x) = (matrix - I) x."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float64)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    return (world @ (matrix - np.eye(3)).T).astype(np.float32)


def test_jacobian_of_a_linear_map_is_its_determinant():
    # Central and one-sided differences are exact for linear fields, whatever the voxel size or obliquity.
    matrix = np.array([[1.1, 0.2, 0.0], [-0.1, 0.9, 0.05], [0.0, 0.1, 1.2]])
    affine = _oblique_affine()
    det = jacobian_determinant(_linear_warp(matrix, affine), affine)
    np.testing.assert_allclose(det, np.linalg.det(matrix), rtol=1e-4)
    assert folding_fraction(det) == 0.0


def test_a_reflection_folds_everywhere():
    det = jacobian_determinant(_linear_warp(np.diag([-1.0, 1.0, 1.0]), _oblique_affine()), _oblique_affine())
    np.testing.assert_allclose(det, -1.0, atol=1e-4)
    assert folding_fraction(det) == 1.0


def test_local_fold_is_counted():
    disp = np.zeros((20, 8, 8, 3), np.float32)
    disp[10, :, :, 0] = 3.0  # one slab jumps 3 voxels ahead: its neighbours see x decrease
    det = jacobian_determinant(disp, np.eye(4))
    assert np.all(det[11] < 0) and np.all(det[9] > 1) and np.all(det[:8] == 1)
    assert folding_fraction(det) == pytest.approx(1 / 20)


def test_jacobian_matches_numpy_gradient_in_float64():
    # An independent oracle: numpy.gradient (central inside, one-sided on the faces) and
    # numpy.linalg.det in float64, on a random field with an oblique, anisotropic grid.
    rng = np.random.default_rng(3)
    disp = rng.normal(0, 0.4, (9, 11, 7, 3)).astype(np.float32)
    affine = _oblique_affine()
    grads = np.stack(np.gradient(disp.astype(np.float64), axis=(0, 1, 2)), axis=-1)  # d u_i / d p_j
    expected = np.linalg.det(grads @ np.linalg.inv(affine[:3, :3]) + np.eye(3))
    # Measured: 3.8e-7 largest absolute difference (float32 arithmetic, |det| up to 3.4); bound about 5x that.
    np.testing.assert_allclose(jacobian_determinant(disp, affine), expected, rtol=0, atol=2e-6)


def test_compressed_outputs_are_plain_gzip_and_reproducible(tmp_path):
    # .nii.gz and .mgz go through ISA-L's deflate (image/compressed.py): standard gzip that
    # Python's own gzip reads, with no name or time in the header, so reruns are byte-identical.
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    for name in ("a.nii.gz", "a.mgz"):
        first, second = tmp_path / name, tmp_path / f"again_{name}"
        save_image(first, data, _oblique_affine())
        save_image(second, data, _oblique_affine())
        raw = first.read_bytes()
        assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip magic, mtime 0
        assert raw == second.read_bytes()
        gzip.decompress(raw)  # a complete stream, CRC checked
        back = nib.load(first)
        np.testing.assert_array_equal(np.asarray(back.dataobj), data)
        np.testing.assert_allclose(back.affine, _oblique_affine(), atol=1e-5)


def test_atomic_file_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "result.nii.gz"
    target.write_bytes(b"good")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        pathlib.Path(tmp).write_bytes(b"half")
        raise RuntimeError("killed while writing")
    assert target.read_bytes() == b"good" and os.listdir(tmp_path) == ["result.nii.gz"]


@pytest.fixture
def umask():
    """Set the process umask for one test, and restore it."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o077, 0o022, 0o002])
def test_outputs_respect_the_umask(tmp_path, umask, mask):
    # On a shared cluster with umask 077 an image must not become world-readable.
    umask(mask)
    target = tmp_path / "image.nii.gz"
    with atomic_file(target) as tmp:
        pathlib.Path(tmp).write_bytes(b"new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    with atomic_directory(tmp_path / "bundle") as tmp:
        pathlib.Path(tmp, "config.json").write_text("{}")
    assert stat.S_IMODE((tmp_path / "bundle").stat().st_mode) == 0o777 & ~mask


def test_replaced_output_keeps_its_permissions(tmp_path, umask):
    # As open() does: overwriting an existing file keeps its mode.
    umask(0o022)
    target = tmp_path / "image.nii.gz"
    target.write_bytes(b"old")
    target.chmod(0o600)
    with atomic_file(target) as tmp:
        pathlib.Path(tmp).write_bytes(b"new")
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o600


@pytest.mark.parametrize("failing", [1, 2, 3, 4])
def test_output_batch_rename_failure_restores_earlier_files(tmp_path, monkeypatch, failing):
    """The k-th final rename fails: every target is as it was, and no temporary is left."""
    paths = [tmp_path / name for name in ("a.nii.gz", "b.nii.gz", "new.nii.gz", "c.nii.gz")]
    for path in paths:
        if path.name != "new.nii.gz":
            path.write_bytes(b"old " + path.name.encode())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real, renames = os.replace, []

    def replace(src, dst):
        if os.path.basename(os.fspath(src)).startswith(".ilex-") and not os.path.basename(os.fspath(src)).startswith(
            ".ilex-old-"
        ):
            renames.append(dst)
            if len(renames) == failing:
                raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space"), output_batch():
        for path in paths:
            with atomic_file(path) as tmp:
                pathlib.Path(tmp).write_bytes(b"new")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_output_batch_is_all_or_nothing(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_bytes(b"old a")
    with pytest.raises(OSError), output_batch():
        with atomic_file(a) as tmp:
            pathlib.Path(tmp).write_bytes(b"new a")
        assert a.read_bytes() == b"old a"  # not yet: the batch has not finished
        raise OSError("disk full while writing b")
    assert a.read_bytes() == b"old a" and sorted(os.listdir(tmp_path)) == ["a.txt"]
    with output_batch():
        for path in (a, b):
            with atomic_file(path) as tmp:
                pathlib.Path(tmp).write_bytes(b"new")
    assert a.read_bytes() == b.read_bytes() == b"new"


def _register(out, *extra):
    argv = [
        "register",
        data_path("colin27_t1.nii.gz"),
        data_path("mni2009a_t1.nii.gz"),
        "-m",
        "deform",
        "-w",
        E32,
        "-e",
        "32",
        "-o",
        str(out / "moved.nii.gz"),
        "-O",
        str(out / "fixed_moved.mgz"),
        "-t",
        str(out / "fw.nii.gz"),
        "-T",
        str(out / "bw.mgz"),
        "--qc",
        str(out / "qc"),
        *extra,
    ]
    return main(argv)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    outs = [tmp_path_factory.mktemp(f"run{k}") for k in range(2)]
    for out in outs:
        assert _register(out, "-q") == 0
    return outs


def _files(directory):
    return sorted(os.path.relpath(os.path.join(r, f), directory) for r, _, fs in os.walk(directory) for f in fs)


@pytest.mark.realdata
def test_reruns_are_bit_identical(two_runs):
    first, second = two_runs
    names = _files(first)
    assert names == [
        "bw.mgz",
        "fixed_moved.mgz",
        "fw.nii.gz",
        "moved.nii.gz",
        "qc/checkerboard.png",
        "qc/jacobian.nii.gz",
        "qc/qc.json",
        "qc/report.html",
        "qc/report.npz",
    ]
    assert names == _files(second)
    for name in names:
        if name not in ("qc/report.html", "qc/report.npz"):  # these record the run's times and memory
            assert (first / name).read_bytes() == (second / name).read_bytes(), name


@pytest.mark.realdata
def test_itk_warp_rerun_is_bit_identical(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "ilex",
        data_path("colin27_t1.nii.gz"),
        data_path("mni2009a_t1.nii.gz"),
        "-m",
        "deform",
        "-w",
        E32,
        "-e",
        "32",
        "--warp-format",
        "itk",
        "-q",
    ]
    for k in range(2):
        subprocess.run(cmd + ["-t", str(tmp_path / f"itk{k}.nii.gz")], check=True)
    assert (tmp_path / "itk0.nii.gz").read_bytes() == (tmp_path / "itk1.nii.gz").read_bytes()


@pytest.mark.realdata
def test_qc_report_is_consistent(two_runs):
    out = two_runs[0]
    record = json.loads((out / "qc" / "qc.json").read_text())
    jac = nib.load(out / "qc" / "jacobian.nii.gz")
    fixed = nib.load(data_path("mni2009a_t1.nii.gz"))
    assert jac.shape == fixed.shape and np.allclose(jac.affine, fixed.affine)
    det = np.asarray(jac.dataobj)
    assert record["folding_fraction"] == pytest.approx(np.mean(det <= 0))
    assert record["jacobian_min"] == pytest.approx(det.min()) and record["hyper"] == 0.5
    # The QC Jacobian is that of the forward warp written with -t.
    warp = np.asarray(nib.load(out / "fw.nii.gz").dataobj)[:, :, :, 0, :]
    np.testing.assert_allclose(jacobian_determinant(warp, fixed.affine), det, atol=1e-5)
    png = PILImage.open(out / "qc" / "checkerboard.png")
    # Three 1 mm panels of MNI 2009a (197 x 233 x 189 mm): sagittal 233 wide, coronal and axial 197, 4 px gaps.
    assert png.mode == "L" and png.size == (233 + 197 + 197 + 8, 233)


@pytest.mark.realdata
def test_summary_line_reports_folding(tmp_path, capsys):
    assert _register(tmp_path) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "peak memory" in last and "% of voxels (det J ≤ 0)" in last


@pytest.mark.realdata
@pytest.mark.parametrize("conv", ["direct", "winograd"])
def test_convolution_algorithms_agree(two_runs, tmp_path, conv):
    # The default (Winograd F(4,3) on CPU) against XLA's direct convolution and F(2,3); the
    # second assertion checks that --conv took effect (rounding differs between algorithms).
    assert _register(tmp_path, "-q", "--conv", conv) == 0
    default = np.asarray(nib.load(two_runs[0] / "fw.nii.gz").dataobj)
    other = np.asarray(nib.load(tmp_path / "fw.nii.gz").dataobj)
    assert np.abs(other - default).max() <= 1e-3  # mm; the warps span several mm
    assert np.abs(other - default).max() > 0
