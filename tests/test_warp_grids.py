"""A warp ilex writes records the grid of the image it applies to; `ilex apply` refuses another.

Carrying labels back from a template with the forward warp instead of the inverse ran silently
(issue 35): both grids have the same shape. Here the moving and fixed heads share their shape
and differ in voxel-to-RAS, the warps come from `ilex register` with `seam_methods.ConstantFlow`
(a closed-form warp, seconds), and warps without the record (other tools', plain 3-frame
volumes) must apply as before.
"""

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

import ilex
from ilex.cli.main import main
from ilex.errors import ImageFileError
from ilex.image.io import load_image
from ilex.image.warp_io import Warp, load_warp, save_warp
from ilex.registration.apply import apply_warp

WARP = "seam_methods.ConstantFlow"
# (warp format, file suffix): every kind of warp file `ilex register -t/-T` writes.
KINDS = [("freesurfer", ".nii.gz"), ("itk", ".nii.gz"), ("freesurfer", ".mgz")]


def _head(path, origin, seed):
    # A smooth textured blob on a 20^3 grid of 2 mm voxels whose corner voxel lies at `origin`.
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(20.0)] * 3, indexing="ij"), -1) * 2.0 - 19.0
    blob = np.exp(-(grid**2).sum(-1) / (2 * 5.0**2))
    data = np.where(blob > 1e-3, blob * (100 + gaussian_filter(rng.normal(size=(20,) * 3), 2) * 10), 0.0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
    return str(path)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """moving/fixed heads (same shape, vox2ras 10 mm apart) and, per kind, the -t/-T warps."""
    d = tmp_path_factory.mktemp("grids")
    moving, fixed = _head(d / "moving.nii.gz", -19.0, 0), _head(d / "fixed.nii.gz", -9.0, 1)
    warps = {}
    for fmt, suffix in KINDS:
        fwd, inv = str(d / f"fwd_{fmt}{suffix}"), str(d / f"inv_{fmt}{suffix}")
        argv = ["register", moving, fixed, "-m", WARP, "-t", fwd, "-T", inv, "--warp-format", fmt, "-q"]
        assert main(argv) == 0
        warps[fmt, suffix] = fwd, inv
    return {"moving": moving, "fixed": fixed, "warps": warps, "dir": d}


@pytest.mark.parametrize(("fmt", "suffix"), KINDS)
def test_each_warp_applies_to_the_image_it_was_made_from(pair, fmt, suffix, tmp_path):
    fwd, inv = pair["warps"][fmt, suffix]
    moved, back = str(tmp_path / "moved.nii.gz"), str(tmp_path / "back.nii.gz")
    assert main(["apply", fwd, pair["moving"], moved, "-q"]) == 0
    assert main(["apply", inv, pair["fixed"], back, "-q"]) == 0
    np.testing.assert_allclose(nib.load(moved).affine, nib.load(pair["fixed"]).affine, atol=1e-4)
    np.testing.assert_allclose(nib.load(back).affine, nib.load(pair["moving"]).affine, atol=1e-4)
    # The record names the source grid, and ITK's and nibabel's view of the field is unchanged by it.
    warp = load_warp(fwd)
    assert tuple(warp.source_shape) == (20, 20, 20)
    np.testing.assert_allclose(warp.source_affine, nib.load(pair["moving"]).affine, atol=1e-4)


@pytest.mark.parametrize(("fmt", "suffix"), KINDS)
def test_a_warp_on_the_wrong_image_is_refused_naming_both(pair, fmt, suffix, tmp_path, capsys):
    fwd, inv = pair["warps"][fmt, suffix]
    out = tmp_path / "out.nii.gz"
    for warp, image in ((fwd, pair["fixed"]), (inv, pair["moving"])):
        assert main(["apply", warp, image, str(out), "-q"]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err, err
        assert image in err and warp in err and "--force" in err, err
        assert "20x20x20 vox2ras [2 0 0 -9;" in err and "[2 0 0 -19;" in err, err  # both grids
        assert not out.exists()
        with pytest.raises(ImageFileError, match="force=True applies it anyway"):
            ilex.apply(warp, image)


@pytest.mark.parametrize(("fmt", "suffix"), KINDS)
def test_force_applies_it_anyway(pair, fmt, suffix, tmp_path):
    fwd, _ = pair["warps"][fmt, suffix]
    out = str(tmp_path / "forced.nii.gz")
    assert main(["apply", fwd, pair["fixed"], out, "--force", "-q"]) == 0
    expected = apply_warp(load_warp(fwd), load_image(pair["fixed"]))  # what apply did before the check
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), expected)
    np.testing.assert_array_equal(np.asarray(ilex.apply(fwd, pair["fixed"], force=True).dataobj), expected)


def test_warps_without_the_record_apply_as_before(pair, tmp_path):
    """Fields other tools write (no source grid: a plain NIfTI or ITK field, a 3-frame MGZ) apply to
    any image, as they did."""
    fixed = nib.load(pair["fixed"])
    disp = np.full((20, 20, 20, 3), 1.5, np.float32)
    plain = {
        "nifti.nii.gz": lambda p: save_warp(p, Warp(disp, fixed.affine)),
        "itk.nii.gz": lambda p: save_warp(p, Warp(disp, fixed.affine), "itk"),
        "plain.mgz": lambda p: nib.save(nib.MGHImage(disp, fixed.affine), p),
        "plain.nii.gz": lambda p: nib.save(nib.Nifti1Image(disp, fixed.affine), p),
    }
    for name, write in plain.items():
        path = str(tmp_path / name)
        write(path)
        assert load_warp(path).source_affine is None, name
        for image in (pair["moving"], pair["fixed"]):
            out = str(tmp_path / "out.nii.gz")
            assert main(["apply", path, image, out, "-q"]) == 0, (name, image)
            expected = apply_warp(Warp(disp, fixed.affine), load_image(image))
            np.testing.assert_allclose(np.asarray(nib.load(out).dataobj), expected, atol=1e-4)
