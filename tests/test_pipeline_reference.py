"""The whole `ilex register` against `mri_synthmorph register -m deform` (random e64 weights).

Reference: `mri_synthmorph register -m deform -e 64 -r 0.3 -n 5` of Colin27 onto MNI152 2009a;
the fixture keeps its network inputs and its warps / moved images at 20,000+ sampled voxels
(including every corner, where edge clamping matters).
"""

import gzip
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import fixture_path
from data import data_path

import ilex
from ilex.image.warp_io import load_warp
from ilex.registration.pipeline import register

pytestmark = pytest.mark.realdata

@pytest.fixture(scope="module")
def ref():
    return np.load(fixture_path("pipeline_ch2_to_mni.npz"))


@pytest.fixture(scope="module")
def run(ref, tmp_path_factory):
    moving, fixed = data_path("colin27_t1.nii.gz"), data_path("mni2009a_t1.nii.gz")
    out = tmp_path_factory.mktemp("reg")
    cmd = [sys.executable, "-m", "ilex", "register", moving, fixed, "-w", fixture_path("net_e64_mixed.h5"), "-e", "64",
           "-r", "0.3", "-n", "5", "-o", str(out / "moved.nii.gz"), "-O", str(out / "fixed_moved.nii.gz"),
           "-t", str(out / "fw.nii.gz"), "-T", str(out / "bw.nii.gz"), "-d", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    subprocess.run(cmd[:-10] + ["-t", str(out / "fw.mgz"), "-q"], check=True)
    return out, proc.stdout


def test_network_inputs(run, ref):
    out, _ = run
    for k in (1, 2):
        img = nib.load(out / f"inp_{k}.mgz")
        assert np.abs(img.get_fdata(dtype=np.float32) - ref[f"inp_{k}"]).max() <= 1e-5
        np.testing.assert_allclose(img.affine, ref["net_affine"], atol=1e-4)


@pytest.mark.parametrize("name,idx", [("fw", "fixed_idx"), ("bw", "moving_idx")])
def test_warps(run, ref, name, idx):
    out, _ = run
    img = nib.load(out / f"{name}.nii.gz")
    assert img.shape[3:] == (1, 3) and int(img.header["intent_code"]) == 1006
    np.testing.assert_allclose(img.affine, ref[f"{name}_nii_affine"])
    ours = img.get_fdata(dtype=np.float32)[:, :, :, 0, :][tuple(ref[idx].T)]
    err = np.abs(ours - ref[name])
    assert err.max() <= 1e-3 and err.mean() <= 1e-4  # mm


@pytest.mark.parametrize("name,idx", [("moved", "fixed_idx"), ("fixed_moved", "moving_idx")])
def test_moved_images(run, ref, name, idx):
    out, _ = run
    ours = nib.load(out / f"{name}.nii.gz").get_fdata(dtype=np.float32)[tuple(ref[idx].T)]
    close = np.abs(ours - ref[name]) <= 1e-3 * ref[f"{name}_range"]
    assert close.mean() >= 0.999


def test_mgz_warp_matches_surfa_layout(run, ref):
    out, _ = run
    with gzip.open(out / "fw.mgz") as f:
        raw = f.read()
    n = 197 * 233 * 189 * 3 * 4
    assert raw[:284] == ref["fw_mgz_header"].tobytes()
    assert raw[284 + n :] == ref["fw_mgz_tail"].tobytes()
    warp = load_warp(out / "fw.mgz")
    assert np.abs(warp.displacement[tuple(ref["fixed_idx"].T)] - ref["fw"]).max() <= 1e-3
    assert warp.source_shape == (181, 217, 181)


def test_progress_and_summary(run):
    _, stdout = run
    for stage in ("load", "resample", "network", "compose", "write"):
        assert stage in stdout
    assert "peak memory" in stdout.splitlines()[-1]


def test_python_api_matches_cli(run, ref):
    model = ilex.load(fixture_path("net_e64_mixed.h5"))
    result = register(data_path("colin27_t1.nii.gz"), data_path("mni2009a_t1.nii.gz"), model, hyper=0.3, steps=5, extent=64)
    err = np.abs(result.forward[tuple(ref["fixed_idx"].T)] - ref["fw"])
    assert err.max() <= 1e-3 and err.mean() <= 1e-4
    np.testing.assert_allclose(result.space.net_to_mov, ref["net_to_mov"])
