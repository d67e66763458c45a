"""Registration and warping on real brain MRI fetched from Debian and PyPI (see tests/data.py).

The network has the reduced-width random weights of the e64 fixture: these tests check geometry,
file formats and resampling, which do not depend on trained weights; they are not registrations.
"""

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import fixture_path
from data import data_path
from scipy.ndimage import map_coordinates

import ilex
from ilex.image.io import Image, load_image
from ilex.image.warp_io import Warp, save_warp
from ilex.registration.pipeline import register

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def model():
    return ilex.load(fixture_path("net_e64_mixed.h5"))


def _reorient(image: Image, codes: str) -> Image:
    img = nib.Nifti1Image(image.data, image.affine).as_reoriented(
        nib.orientations.ornt_transform(nib.io_orientation(image.affine), nib.orientations.axcodes2ornt(tuple(codes)))
    )
    return Image(np.asarray(img.dataobj, np.float32), img.affine, image.path)


def _smooth_warp(image: Image, amplitude_mm: float = 3.0) -> Warp:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in image.shape], indexing="ij"), -1).astype(np.float32)
    disp = np.stack([amplitude_mm * np.sin(grid[..., (d + 1) % 3] / 9.0 + d) for d in range(3)], -1).astype(np.float32)
    return Warp(disp, image.affine)


@pytest.fixture(scope="module")
def colin_to_mni(model):
    return register(
        data_path("colin27_t1.nii.gz"), data_path("mni2009a_t1.nii.gz"), model, hyper=0.3, steps=5, extent=64
    )


@pytest.mark.parametrize("codes", ["LAS", "LIA", "PSR"])
def test_moving_orientation_does_not_matter(model, colin_to_mni, codes):
    # The same anatomy stored in another voxel order must give the same warp on the fixed grid.
    moving = _reorient(load_image(data_path("colin27_t1.nii.gz")), codes)
    assert "".join(nib.aff2axcodes(moving.affine)) == codes
    result = register(moving, data_path("mni2009a_t1.nii.gz"), model, hyper=0.3, steps=5, extent=64)
    assert np.abs(result.forward - colin_to_mni.forward).max() <= 1e-3
    # surfa's rule (valid where floor(s) is in [0, N-1]) is not mirror-symmetric, so the moved
    # images may differ within one voxel of the moving field of view's edge; compare elsewhere.
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in colin_to_mni.fixed.shape], indexing="ij"), -1)
    s = grid + colin_to_mni.forward_vox
    interior = np.all((s >= 1) & (s <= np.array(colin_to_mni.moving.shape) - 2), axis=-1)
    assert interior.mean() > 0.5
    assert np.abs(result.moved().get_fdata() - colin_to_mni.moved().get_fdata())[interior].max() <= 1e-3 * 255


def test_las_and_2mm_images(model):
    # SPM's avg152 T2 (LAS, 2 mm) onto FSL's MNI152 with skull (RAS, 2 mm), a cross-contrast pair.
    result = register(
        data_path("spm_avg152t2.nii"), data_path("fsl_mni152_t1_2mm.nii.gz"), model, hyper=0.5, steps=5, extent=64
    )
    assert result.forward.shape == (91, 109, 91, 3) and np.isfinite(result.forward).all()
    assert result.inverse.shape == (91, 109, 91, 3)
    moved = result.moved().get_fdata()
    assert moved.max() > 0 and np.isfinite(moved).all()


def test_anisotropic_moving_network_input_matches_scipy(model):
    full = load_image(data_path("colin27_t1.nii.gz"))
    affine = full.affine.copy()
    affine[:3, 2] *= 2.5  # 1 x 1 x 2.5 mm voxels
    aniso = Image(
        np.ascontiguousarray(full.data[:, :, ::2][..., ::1])[:, :, : (full.shape[2] + 1) // 2], affine, "aniso"
    )
    result = register(aniso, data_path("mni2009a_t1.nii.gz"), model, hyper=0.3, steps=5, extent=64, keep_inputs=True)
    grid = np.stack(np.meshgrid(*[np.arange(64)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(np.float64)
    coords = grid @ result.space.net_to_mov[:3, :3].T + result.space.net_to_mov[:3, 3]
    expected = map_coordinates(aniso.data.astype(np.float64), coords.T, order=1, mode="constant", cval=0.0)
    inside = np.all((coords >= 0) & (coords <= np.array(aniso.shape) - 1), axis=1)
    expected = np.where(inside, expected, 0.0).reshape(64, 64, 64)
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert np.abs(result.inputs[0] - expected).max() <= 1e-4
    assert result.forward.shape[:3] == (197, 233, 189)
    assert result.inverse.shape[:3] == aniso.shape


def test_identity_warp_leaves_image_unchanged(tmp_path):
    image = load_image(data_path("colin27_t1.nii.gz"))
    warp = Warp(np.zeros((*image.shape, 3), np.float32), image.affine)
    save_warp(tmp_path / "id.nii.gz", warp)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ilex",
            "apply",
            str(tmp_path / "id.nii.gz"),
            data_path("colin27_t1.nii.gz"),
            str(tmp_path / "out.nii.gz"),
            "-q",
        ],
        check=True,
    )
    np.testing.assert_array_equal(nib.load(tmp_path / "out.nii.gz").get_fdata(dtype=np.float32), image.data)


@pytest.mark.parametrize("fmt,suffix", [("freesurfer", ".nii.gz"), ("itk", ".nii.gz"), ("freesurfer", ".mgz")])
def test_known_warp_matches_scipy(tmp_path, fmt, suffix):
    image = load_image(data_path("colin27_t1.nii.gz"))
    warp = _smooth_warp(image)
    warp = Warp(warp.displacement, warp.affine, image.affine, image.shape)
    path = tmp_path / f"warp{suffix}"
    save_warp(path, warp, fmt)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ilex",
            "apply",
            str(path),
            data_path("colin27_t1.nii.gz"),
            str(tmp_path / "o.nii.gz"),
            "-q",
        ],
        check=True,
    )
    ours = nib.load(tmp_path / "o.nii.gz").get_fdata(dtype=np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in image.shape], indexing="ij"), -1).astype(np.float64)
    world = grid @ image.affine[:3, :3].T + image.affine[:3, 3] + warp.displacement
    vox = (world - image.affine[:3, 3]) @ np.linalg.inv(image.affine[:3, :3]).T
    expected = map_coordinates(image.data.astype(np.float64), vox.reshape(-1, 3).T, order=1, mode="nearest").reshape(
        image.shape
    )
    inside = np.all((vox >= 0) & (vox <= np.array(image.shape) - 1), axis=-1)
    assert inside.mean() > 0.9
    assert np.abs(ours - expected)[inside].max() <= 1e-3 * np.ptp(image.data)
    assert (ours[~inside & np.any(vox < 0, axis=-1)] == 0).all()  # zero fill outside


def test_nearest_keeps_aal_labels(tmp_path):
    labels = load_image(data_path("colin27_aal.nii.gz"), check_values=False)
    warp = _smooth_warp(labels, amplitude_mm=4.0)
    save_warp(tmp_path / "w.nii.gz", warp)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ilex",
            "apply",
            str(tmp_path / "w.nii.gz"),
            data_path("colin27_aal.nii.gz"),
            str(tmp_path / "aal.nii.gz"),
            "-m",
            "nearest",
            "-t",
            "int32",
            "-q",
        ],
        check=True,
    )
    out = nib.load(tmp_path / "aal.nii.gz")
    assert out.get_data_dtype() == np.int32
    before, after = set(np.unique(labels.data).astype(int)), set(np.unique(np.asarray(out.dataobj)).astype(int))
    assert after <= before | {0}
    assert len(after) >= 0.95 * len(before)


def test_forward_then_inverse_is_near_identity(colin_to_mni):
    r = colin_to_mni
    fix_aff, mov_aff = r.fixed.affine, r.moving.affine
    # Only inside the network cube (64 mm here) are the fields inverse; outside they are clamped.
    rng = np.random.default_rng(0)
    net = rng.uniform(8, 56, (20000, 3))
    p = np.rint(net @ r.space.net_to_fix[:3, :3].T + r.space.net_to_fix[:3, 3]).astype(int)
    x = p @ fix_aff[:3, :3].T + fix_aff[:3, 3]
    x1 = x + r.forward[tuple(p.T)]
    q = (x1 - mov_aff[:3, 3]) @ np.linalg.inv(mov_aff[:3, :3]).T
    back = np.stack([map_coordinates(r.inverse[..., d], q.T, order=1, mode="nearest") for d in range(3)], -1)
    err = np.linalg.norm(x1 + back - x, axis=-1)
    assert np.abs(r.forward).max() > 1.0  # the warp is not trivially small
    assert np.median(err) <= 0.05 and np.percentile(err, 99) <= 0.5  # mm


def test_itk_warp_read_by_simpleitk(colin_to_mni, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    r = colin_to_mni
    save_warp(tmp_path / "itk.nii.gz", Warp(r.forward, r.fixed.affine), "itk")
    field = sitk.ReadImage(str(tmp_path / "itk.nii.gz"), sitk.sitkVectorFloat64)
    transform = sitk.DisplacementFieldTransform(field)
    moving = sitk.ReadImage(data_path("colin27_t1.nii.gz"), sitk.sitkFloat32)
    fixed = sitk.ReadImage(data_path("mni2009a_t1.nii.gz"), sitk.sitkFloat32)
    out = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0)).transpose(2, 1, 0)
    ours = r.moved().get_fdata()
    interior = np.zeros(ours.shape, bool)
    interior[2:-2, 2:-2, 2:-2] = True
    interior &= (out > 0) & (ours > 0)  # ITK's field-of-view edge differs from surfa's by half a voxel
    assert interior.mean() > 0.3
    assert np.abs(out - ours)[interior].max() <= 1e-3 * 255
