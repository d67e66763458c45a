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

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

# Tolerances are about 5x what was measured against the reference (jax 0.10.2, CPU):
INPUT_ATOL = 3e-7  # network inputs (min-max normalised): measured 6.0e-8
WARP_MAX_MM = 1.5e-4  # warps: measured 3.05e-5 mm at most (displacements up to 2.4 mm)
WARP_MEAN_MM = 1.5e-5  # measured 3.1e-6 mm on average
MOVED_REL = 5e-5  # moved images, of the image's range: measured 1.03e-5 away from the edge


@pytest.fixture(scope="module")
def ref():
    return np.load(fixture_path("pipeline_ch2_to_mni.npz"))


@pytest.fixture(scope="module")
def run(ref, tmp_path_factory):
    moving, fixed = data_path("colin27_t1.nii.gz"), data_path("mni2009a_t1.nii.gz")
    out = tmp_path_factory.mktemp("reg")
    cmd = [
        sys.executable,
        "-m",
        "ilex",
        "register",
        moving,
        fixed,
        "-m",
        "deform",
        "-w",
        fixture_path("net_e64_mixed.h5"),
        "-e",
        "64",
        "-r",
        "0.3",
        "-n",
        "5",
        "-o",
        str(out / "moved.nii.gz"),
        "-O",
        str(out / "fixed_moved.nii.gz"),
        "-t",
        str(out / "fw.nii.gz"),
        "-T",
        str(out / "bw.nii.gz"),
        "-d",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    subprocess.run(cmd[:-10] + ["-t", str(out / "fw.mgz"), "-q"], check=True)
    return out, proc.stdout


def test_network_inputs(run, ref):
    out, _ = run
    for k in (1, 2):
        img = nib.load(out / f"inp_{k}.mgz")
        assert np.abs(img.get_fdata(dtype=np.float32) - ref[f"inp_{k}"]).max() <= INPUT_ATOL
        np.testing.assert_allclose(img.affine, ref["net_affine"], atol=1e-4)


@pytest.mark.parametrize("name,idx", [("fw", "fixed_idx"), ("bw", "moving_idx")])
def test_warps(run, ref, name, idx):
    out, _ = run
    img = nib.load(out / f"{name}.nii.gz")
    assert img.shape[3:] == (1, 3) and int(img.header["intent_code"]) == 1006
    np.testing.assert_allclose(img.affine, ref[f"{name}_nii_affine"])
    ours = img.get_fdata(dtype=np.float32)[:, :, :, 0, :][tuple(ref[idx].T)]
    err = np.abs(ours - ref[name])
    assert err.max() <= WARP_MAX_MM and err.mean() <= WARP_MEAN_MM


def _edge(points: np.ndarray, shape) -> np.ndarray:
    """Sampling positions (voxels of the sampled image) within one voxel of its field-of-view border.

    There an interpolation weight or the inside/outside decision flips with the last bits of the
    position, so ours and the reference may legitimately differ by a whole intensity step.
    """
    top = np.asarray(shape[:3], float) - 1
    return ((np.abs(points) < 1) | (np.abs(points - top) < 1)).any(axis=-1)


@pytest.mark.parametrize(
    ("name", "idx", "warp", "sampled"),
    [("moved", "fixed_idx", "fw", "colin27_t1.nii.gz"), ("fixed_moved", "moving_idx", "bw", "mni2009a_t1.nii.gz")],
)
def test_moved_images(run, ref, name, idx, warp, sampled):
    out, _ = run
    img = nib.load(out / f"{name}.nii.gz")
    ours = img.get_fdata(dtype=np.float32)[tuple(ref[idx].T)]
    # Where each voxel samples the other image: its world position plus the reference warp.
    source = nib.load(data_path(sampled))
    world = ref[idx] @ img.affine[:3, :3].T + img.affine[:3, 3] + ref[warp]
    position = (world - source.affine[:3, 3]) @ np.linalg.inv(source.affine[:3, :3]).T
    keep = ~_edge(position, source.shape)
    assert keep.mean() > 0.5
    assert np.abs(ours - ref[name])[keep].max() <= MOVED_REL * ref[f"{name}_range"]


def test_mgz_warp_matches_surfa_layout(run, ref):
    out, _ = run
    with gzip.open(out / "fw.mgz") as f:
        raw = f.read()
    n = 197 * 233 * 189 * 3 * 4
    assert raw[:284] == ref["fw_mgz_header"].tobytes()
    assert raw[284 + n :] == ref["fw_mgz_tail"].tobytes()
    warp = load_warp(out / "fw.mgz")
    assert np.abs(warp.displacement[tuple(ref["fixed_idx"].T)] - ref["fw"]).max() <= WARP_MAX_MM
    assert warp.source_shape == (181, 217, 181)


def test_progress_and_summary(run):
    _, stdout = run
    for stage in ("load", "resample", "network", "compose", "write"):
        assert stage in stdout
    assert "peak memory" in stdout.splitlines()[-1]


def test_python_api_matches_cli(run, ref):
    model = ilex.load(fixture_path("net_e64_mixed.h5"))
    result = register(
        data_path("colin27_t1.nii.gz"), data_path("mni2009a_t1.nii.gz"), model, hyper=0.3, steps=5, extent=64
    )
    err = np.abs(result.forward[tuple(ref["fixed_idx"].T)] - ref["fw"])
    assert err.max() <= WARP_MAX_MM and err.mean() <= WARP_MEAN_MM
    np.testing.assert_allclose(result.space.net_to_mov, ref["net_to_mov"])
