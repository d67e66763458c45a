"""`import ilex` gives the user-facing names, and `ilex.apply` is what `ilex apply` writes."""

import nibabel as nib
import numpy as np
import pytest
from conftest import fixture_path
from data import data_path

import ilex
from ilex.cli.main import main


def test_public_names():
    import ilex.convert

    for name in (
        "register",
        "Registration",
        "Registrar",
        "Settings",
        "load",
        "apply",
        "Method",
        "NetworkTransform",
        "Image",
        "as_method",
        "write_outputs",
        "save_bundle",
        "convert_weights",
        "transforms",
        "losses",
    ):
        assert hasattr(ilex, name), name
    # The subpackage is not shadowed by a function of the same name.
    assert isinstance(ilex.convert, type(ilex)) and callable(ilex.convert_weights)
    assert ilex.register is ilex.registration.pipeline.register


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("method, dtype", [("linear", "float32"), ("nearest", "int32")])
def test_apply_matches_the_command(tmp_path, method, dtype):
    lta = fixture_path("affine_lta/colin_to_mni_affine_fw.lta")
    colin = data_path("colin27_t1.nii.gz")
    assert main(["apply", "-m", method, "-t", dtype, lta, colin, str(tmp_path / "cli.nii.gz"), "-q"]) == 0
    ours = ilex.apply(lta, colin, method=method, dtype=dtype)
    cli = nib.load(tmp_path / "cli.nii.gz")
    assert ours.get_data_dtype() == np.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(cli.dataobj))
    np.testing.assert_allclose(ours.affine, cli.affine, atol=1e-6)
    # also from an image in memory, and header-only
    assert np.array_equal(
        np.asarray(ilex.apply(lta, nib.load(colin), method=method, dtype=dtype).dataobj), np.asarray(ours.dataobj)
    )
    header = ilex.apply(lta, colin, header_only=True)
    assert header.shape == nib.load(colin).shape


def test_apply_refusals(tmp_path):
    warp = tmp_path / "w.nii.gz"
    from ilex.image.warp_io import Warp, save_warp

    save_warp(warp, Warp(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)))
    image = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4))
    with pytest.raises(ValueError, match="header-only output needs a matrix"):
        ilex.apply(warp, image, header_only=True)
    with pytest.raises(ValueError, match="method must be"):
        ilex.apply(warp, image, method="cubic")
    with pytest.raises(ilex.errors.FileProblem, match="no such transform file"):
        ilex.apply(tmp_path / "missing.lta", image)
    np.testing.assert_array_equal(np.asarray(ilex.apply(warp, image).dataobj), 1.0)  # identity warp


def test_library_errors_name_arguments_and_the_cli_its_flags(capsys):
    from ilex.errors import OptionError
    from ilex.registration.methods.base import check_hyper, check_steps

    with pytest.raises(OptionError) as e:
        check_hyper(1.5)
    assert str(e.value).startswith("hyper=1.5: ") and "-r" not in str(e.value)
    with pytest.raises(OptionError) as e:
        check_steps(0)
    assert str(e.value).startswith("steps=0: ")
    assert main(["register", "m.nii.gz", "f.nii.gz", "-m", "optimize", "-r", "1.5", "-o", "o.nii.gz"]) == 1
    assert "ilex register: error: -r 1.5: the regularisation weight" in capsys.readouterr().err


def test_no_code_outside_the_methods_branches_on_a_methods_name():
    """The seam: what a method is (matrix or warp, weights, detector, options) comes from its
    `MethodInfo`, never from comparing its name, anywhere but in `registration/methods/`."""
    import pathlib
    import re

    src = pathlib.Path(ilex.__file__).parent
    names = "joint|deform|affine|rigid|optimize|refine"
    pattern = re.compile(rf"""(==|!=|\bin)\s*\(?\s*["']({names})["']""")
    offenders = [
        f"{path.relative_to(src)}:{n}: {line.strip()}"
        for path in src.rglob("*.py")
        if "methods" not in path.parts
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_method_info_agrees_with_the_methods():
    from ilex.bundle.weights import WEIGHT_FILES
    from ilex.registration.methods import METHOD_NAMES, method_info

    for name in METHOD_NAMES:
        info = method_info(name)
        assert info.weight_files == WEIGHT_FILES[name]
        assert info.optimiser == (info.weight_files == ())  # the optimiser is the one method without weights
    assert method_info("def") == method_info("deform") and method_info("deform").centre_on_fixed
    assert [n for n in METHOD_NAMES if method_info(n).yields_matrix] == ["affine", "rigid"]
    with pytest.raises(ValueError, match="unknown model"):
        method_info("banana")
