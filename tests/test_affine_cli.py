"""`ilex apply` with matrices, `ilex convert` of the affine/rigid weights, `-m affine` outputs."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import fixture_path
from data import data_path

import ilex
from ilex.cli.main import main

pytestmark = pytest.mark.slow  # the full pipeline or many processes: CI runs it, `-m "not slow"` skips it


def _ilex(*argv):
    assert main([str(a) for a in argv]) == 0


@pytest.mark.realdata
def test_apply_reference_lta_reproduces_its_moved_image(tmp_path):
    # mri_synthmorph's own -t LTA, applied by ilex, gives mri_synthmorph's -o image (surfa's sampling rule).
    z = np.load(fixture_path("affine_e64_colin_to_mni.npz"))
    _ilex(
        "apply",
        fixture_path("affine_lta/colin_to_mni_affine_fw.lta"),
        data_path("colin27_t1.nii.gz"),
        tmp_path / "moved.nii.gz",
        "-q",
    )
    moved = nib.load(tmp_path / "moved.nii.gz")
    assert moved.shape == tuple(z["fix_shape"]) and np.abs(moved.affine - z["fix_vox2ras"]).max() < 1e-4
    assert np.abs(moved.get_fdata()[tuple(z["fixed_idx"].T)] - z["affine_moved"]).max() < 2e-2  # measured 7e-3 of 255


@pytest.mark.realdata
def test_apply_header_only_matches_register_H(tmp_path):
    z = np.load(fixture_path("affine_e64_colin_to_mni.npz"))
    _ilex(
        "apply",
        "-H",
        fixture_path("affine_lta/colin_to_mni_affine_fw.lta"),
        data_path("colin27_t1.nii.gz"),
        tmp_path / "h.nii.gz",
        "-q",
    )
    out = nib.load(tmp_path / "h.nii.gz")
    assert np.abs(out.affine - z["affine_H_moved_vox2ras"]).max() < 1e-4
    assert np.array_equal(out.get_fdata(), nib.load(data_path("colin27_t1.nii.gz")).get_fdata())


@pytest.mark.realdata
def test_itk_text_and_lta_agree(tmp_path):
    colin, mni = data_path("colin27_t1.nii.gz"), data_path("mni2009a_t1.nii.gz")
    common = ["register", colin, mni, "-m", "affine", "-w", fixture_path("affine_e64.h5"), "-e", "64", "-q"]
    _ilex(*common, "-t", tmp_path / "a.lta", "-o", tmp_path / "moved.nii.gz")
    _ilex(*common, "-t", tmp_path / "a.txt")
    _ilex(*common, "-t", tmp_path / "a.tfm", "--warp-format", "itk")
    _ilex("apply", tmp_path / "a.txt", colin, tmp_path / "via_itk.nii.gz", "--reference", mni, "-q")
    _ilex("apply", tmp_path / "a.tfm", colin, tmp_path / "via_tfm.nii.gz", "--reference", mni, "-q")
    _ilex("apply", tmp_path / "a.lta", colin, tmp_path / "via_lta.nii.gz", "-q")
    ref = nib.load(tmp_path / "moved.nii.gz").get_fdata()
    for name in ("via_itk", "via_tfm", "via_lta"):
        assert np.abs(nib.load(tmp_path / f"{name}.nii.gz").get_fdata() - ref).max() < 1e-2, name
    # ITK's own reader resamples the same way through the text transform.
    sitk = pytest.importorskip("SimpleITK")
    tx = sitk.ReadTransform(str(tmp_path / "a.txt"))
    moving, fixed = sitk.ReadImage(colin, sitk.sitkFloat32), sitk.ReadImage(mni, sitk.sitkFloat32)
    out = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, tx, sitk.sitkLinear, 0.0)).transpose(2, 1, 0)
    # The samplers differ only where the sample lies within a voxel of the moving image's border
    # (ITK fills, surfa repeats the last slice): compare everywhere else.
    from ilex.registration.affine_init import read_initial_affine

    a_mov, a_fix = nib.load(colin).affine, nib.load(mni).affine
    to_moving = (
        np.linalg.inv(a_mov) @ np.linalg.inv(read_initial_affine(tmp_path / "a.lta", np.eye(4), np.eye(4))) @ a_fix
    )
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in ref.shape], indexing="ij"), -1)
    where = grid @ to_moving[:3, :3].T + to_moving[:3, 3]
    interior = np.all((where > 1) & (where < np.array(nib.load(colin).shape) - 2), axis=-1)
    edge = ~interior & np.all((where > -1) & (where < np.array(nib.load(colin).shape)), axis=-1)
    assert np.abs(out - ref)[interior].max() < 1e-2  # measured 2.3e-3 on intensities up to 255
    assert edge.mean() < 0.06  # the excluded band: measured 4.1 % of the fixed grid


def test_dense_warp_of_a_matrix_and_apply_refusals(tmp_path, capsys):
    colin = fixture_path("affine_e64.h5")  # any file: the refusals come before it is read
    assert (
        main(
            [
                "apply",
                "-H",
                fixture_path("affine_lta/colin_to_mni_affine_fw.lta").replace(".lta", ".nii.gz"),
                colin,
                str(tmp_path / "x.nii.gz"),
            ]
        )
        == 1
    )
    assert "header-only output needs a matrix" in capsys.readouterr().err
    (tmp_path / "t.txt").write_text(
        "#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
        "Parameters: 1 0 0 0 1 0 0 0 1 0 0 0\nFixedParameters: 0 0 0\n"
    )
    img = tmp_path / "i.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.eye(4)), img)
    assert main(["apply", str(tmp_path / "t.txt"), str(img), str(tmp_path / "o.nii.gz")]) == 1
    assert "--reference" in capsys.readouterr().err and not (tmp_path / "o.nii.gz").exists()


@pytest.mark.parametrize("name, rigid", [("affine_e64.h5", False), ("rigid_e64.h5", True)])
def test_convert_affine_and_rigid(tmp_path, name, rigid):
    subprocess.run([sys.executable, "-m", "ilex", "convert", fixture_path(name), str(tmp_path / "b"), "-q"], check=True)
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["_ilex"]["architecture"] == "ilex.models.synthmorph_affine.model.SynthMorphAffine"
    assert config["_ilex"]["constructor_kwargs"]["rigid"] is rigid
    assert "FreeSurfer Software License" in config["copyright"] and len(config["_ilex"]["source_sha256"]) == 64
    bundle, h5 = ilex.load(tmp_path / "b"), ilex.load(fixture_path(name))
    assert bundle.rigid is rigid
    for a, b in zip(bundle.convs, h5.convs, strict=True):
        assert np.array_equal(a.kernel, b.kernel) and np.array_equal(a.bias, b.bias)
    proc = subprocess.run(
        [sys.executable, "-m", "ilex", "convert", fixture_path(name), str(tmp_path / "c"), "-r", "0.5"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and "has no λ" in proc.stderr and not (tmp_path / "c").exists()


def test_known_releases_are_recognised():
    from ilex.convert.releases import KNOWN_RELEASES

    names = {name for name, _ in KNOWN_RELEASES.values()}
    assert names == {"synthmorph.deform.3.h5", "synthmorph.affine.2.h5", "synthmorph.rigid.1.h5"}
