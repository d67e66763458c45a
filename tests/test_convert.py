"""`ilex convert`: positional reading of Keras h5 files, streaming, fixed λ, bad files."""

import os
import pathlib
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import fixture_path

import ilex
from ilex.convert.keras_h5 import open_keras_weights, write_keras_weights
from ilex.errors import WeightsFileError

E64 = fixture_path("net_e64_mixed.h5")


@pytest.fixture(scope="module")
def ref():
    return np.load(fixture_path("net_e64_mixed.npz"))


@pytest.fixture(scope="module")
def arrays():
    with open_keras_weights(E64) as ws:
        return [np.asarray(w.dataset[()]) for w in ws]


def _raw(model, ref):
    if isinstance(model, ilex.SynthMorphUNet):
        return np.asarray(model(ref["half_mov"][0], ref["half_fix"][0]))
    return np.asarray(model(float(ref["hyper"][0]), ref["half_mov"][0], ref["half_fix"][0]))


def _close(out, ref):
    assert np.abs(out - ref["unet_raw_1"][0]).max() <= 1e-5 * np.abs(ref["unet_raw_1"][0]).max()


def test_convert_round_trip(ref, tmp_path):
    out = ilex.convert_weights(E64, tmp_path / "bundle", progress=False)
    _close(_raw(ilex.load(out), ref), ref)


def test_convert_fixed_lambda(ref, tmp_path):
    ilex.convert_weights(E64, tmp_path / "fixed", hyper=float(ref["hyper"][0]), progress=False)
    fixed = ilex.load(tmp_path / "fixed")
    assert isinstance(fixed, ilex.SynthMorphUNet)
    _close(_raw(fixed, ref), ref)
    full = os.path.getsize(tmp_path / "fixed" / "model.safetensors")
    assert full < os.path.getsize(E64) / 10


@pytest.mark.parametrize("layout", ["nested", "flat", "model_weights"])
def test_layouts_and_unsorted_layer_suffixes(layout, arrays, ref, tmp_path):
    # Keras suffixes need not be 0..12; alphabetical group order (_10 < _2) must not matter.
    suffixes = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    path = tmp_path / f"{layout}.h5"
    write_keras_weights(path, arrays, layout=layout, layer_suffixes=suffixes)
    _close(_raw(ilex.load(path), ref), ref)


def test_cli_convert_shows_progress_and_writes_bundle(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ilex", "convert", E64, str(tmp_path / "b"), "--progress"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "convert" in proc.stderr and "100%" in proc.stderr
    assert sorted(os.listdir(tmp_path / "b")) == ["config.json", "model.safetensors"]


def _fails(path, tmp_path, match):
    with pytest.raises(WeightsFileError, match=match) as err:
        ilex.convert_weights(path, tmp_path / "out", progress=False)
    assert str(path) in str(err.value)
    assert not (tmp_path / "out").exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".out")] == []


def test_not_hdf5(tmp_path):
    bad = tmp_path / "weights.h5"
    bad.write_text("hello")
    _fails(bad, tmp_path, "not an HDF5 file")


def test_truncated(tmp_path):
    data = pathlib.Path(E64).read_bytes()
    bad = tmp_path / "trunc.h5"
    bad.write_bytes(data[: len(data) // 2])
    _fails(bad, tmp_path, "truncated or corrupt")


def test_foreign_hdf5(tmp_path):
    bad = tmp_path / "foreign.h5"
    with h5py.File(bad, "w") as f:
        f["data"] = np.zeros(3)
    _fails(bad, tmp_path, "not a Keras weights file")


def test_wrong_architecture(arrays, tmp_path):
    bad = tmp_path / "short.h5"
    with h5py.File(bad, "w") as f:
        f.attrs["layer_names"] = np.array([b"dense", b"conv"])
        f.create_group("dense").attrs["weight_names"] = np.array([b"dense/kernel:0", b"dense/bias:0"])
        f["dense/dense/kernel:0"] = np.zeros((1, 32), np.float32)
        f["dense/dense/bias:0"] = np.zeros((32,), np.float32)
        f.create_group("conv").attrs["weight_names"] = np.array([b"conv/kernel:0", b"conv/bias:0"])
        f["conv/conv/kernel:0"] = np.zeros((3, 3, 3, 2, 8), np.float32)
        f["conv/conv/bias:0"] = np.zeros((8,), np.float32)
    _fails(bad, tmp_path, "not a SynthMorph deformable model")


def test_output_directory_kept_on_failure(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(Exception, match="not empty"):
        ilex.convert_weights(E64, out, progress=False)
    assert os.listdir(out) == ["mine.txt"]


def test_writing_weights_is_atomic(arrays, tmp_path):
    """`write_keras_weights` writes beside the target and renames: a write that fails midway (here the
    fifth array's fill raises) leaves an existing file byte for byte and nothing else in the folder;
    a write that succeeds replaces it whole.

    Before: h5py opened the target itself with "w", so the same failure left a truncated,
    half-written file in place of the good one.
    """
    path = tmp_path / "weights.h5"
    write_keras_weights(path, arrays)
    before = path.read_bytes()

    def broken(dataset):
        raise OSError("disk full")

    items = [(a.shape, (lambda d, a=a: d.__setitem__(..., a))) for a in arrays]
    items[4] = (arrays[4].shape, broken)
    with pytest.raises(OSError, match="disk full"):
        write_keras_weights(path, items)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["weights.h5"]
    write_keras_weights(path, items[:4] + [(arrays[4].shape, lambda d: d.__setitem__(..., 0.0))] + items[5:])
    with open_keras_weights(path) as ws:
        assert not np.asarray(ws[4].dataset[()]).any() and np.array_equal(ws[5].dataset[()], arrays[5])
