"""`import ilex` gives the user-facing names, and `ilex.apply` is what `ilex apply` writes."""

import types

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
    assert isinstance(ilex.convert, types.ModuleType) and callable(ilex.convert_weights)
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


def _method_name_literals(names: set[str]) -> list[str]:
    """Every string literal, docstrings aside, that is exactly one of `names`, in ilex outside
    `registration/methods/` (where `-m` is resolved) and the networks' own packages (where
    "rigid" is a model's configuration, not a method)."""
    import ast
    import pathlib

    src = pathlib.Path(ilex.__file__).parent
    found = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        if rel.parts[:2] == ("registration", "methods") or rel.parts[0] in ("models", "convert"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        found += [
            f"{rel}:{node.lineno}: {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in names and id(node) not in docstrings
        ]
    return found


def test_no_code_outside_the_methods_names_a_method():
    """The seam: what a method is (matrix or warp, weights, detector, options, its prior affine)
    is read from the `Method` object or the class `-m` resolves to. This guards the way names
    crept in before: no method name written as a string anywhere but in `registration/methods/`.

    Any literal method name counts, not only comparisons: a `{"joint": ...}` table or a
    `"joint" if ... else "deform"` default is found as surely as `== "deform"` (a name reached
    through a class, `SynthMorphAffineMethod.name`, is not a literal and is not looked for). "affine" is also
    a word of geometry (`image.affine`, the `affine` output), so it is checked by the comparison
    rule below only. Mutation check: putting back `WEIGHT_FILES = {"joint": ...}` in
    bundle/weights.py, or `template_weights = "joint" if ...` in the template, fails this test
    (both were there before the facts moved onto the classes)."""
    import pathlib
    import re

    from ilex.registration.methods import METHOD_NAMES

    names = {*METHOD_NAMES, "refine", "optimize-affine"} - {"affine"}
    # An argument's name, not a method's: the flag `refine=` is given by (--refine).
    allowed = {("cli/main.py", "'refine'")}
    found = _method_name_literals(names)
    assert [line for line in found if (line.split(":")[0], line.split(": ")[-1]) not in allowed] == []
    src = pathlib.Path(ilex.__file__).parent
    pattern = re.compile(r"""(==|!=|\bin)\s*\(?\s*["']affine["']""")
    offenders = [
        f"{path.relative_to(src)}:{n}: {line.strip()}"
        for path in src.rglob("*.py")
        if "methods" not in path.parts
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_the_methods_declare_their_facts():
    from ilex.registration.methods import (
        METHOD_NAMES,
        METHODS,
        Method,
        SynthMorphDeformMethod,
        method_class,
        unaligned_weight_files,
    )

    assert METHOD_NAMES == ("joint", "deform", "affine", "rigid", "optimize")  # mri_synthmorph's, then ilex's
    for name, cls in METHODS.items():
        assert issubclass(cls, Method) and cls.name == name and cls.summary
        assert len(cls.weight_roles) == len(cls.weight_files)
        # The optimiser is the one method without weights, and the one that takes its options.
        assert cls.takes_optimiser_options == (cls.weight_files == ())
    assert method_class("def") is SynthMorphDeformMethod and SynthMorphDeformMethod.centre_on_fixed
    assert [n for n in METHOD_NAMES if method_class(n).yields_matrix] == ["affine", "rigid"]
    assert [n for n in METHOD_NAMES if method_class(n).runs_detector] == ["joint", "affine", "rigid"]
    # deform's affine stage (ilex template) is SynthMorph's detector: joint's two files, in -w order.
    assert unaligned_weight_files("deform") == method_class("joint").weight_files
    assert unaligned_weight_files("optimize") == ()
    with pytest.raises(ValueError, match="unknown model"):
        method_class("banana")


def test_apply_takes_its_options_among_the_pairs(tmp_path):
    # `ilex apply WARP IMG1 OUT1 -m nearest IMG2 OUT2`: options before, between or after the IMAGE OUT pairs
    # mean what they mean at the end.
    from ilex.image.warp_io import Warp, save_warp

    warp = str(tmp_path / "w.nii.gz")
    save_warp(warp, Warp(np.full((8, 8, 8, 3), 0.5, np.float32), np.eye(4)))  # half a voxel: linear blends labels
    labels = np.random.default_rng(0).integers(0, 5, (8, 8, 8)).astype(np.float32)
    images = []
    for name in ("a", "b"):
        images.append(str(tmp_path / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(labels + (name == "b"), np.eye(4)), images[-1])

    def outputs(where: str, *args):
        outs = [str(tmp_path / f"{where}_{name}.nii.gz") for name in ("a", "b")]
        return outs, [a.format(w=warp, a=images[0], b=images[1], oa=outs[0], ob=outs[1]) for a in args]

    runs = {
        "end": outputs("end", "{w}", "{a}", "{oa}", "{b}", "{ob}", "-m", "nearest", "-f", "7", "-q"),
        "before": outputs("before", "-m", "nearest", "-f", "7", "-q", "{w}", "{a}", "{oa}", "{b}", "{ob}"),
        "between": outputs("between", "{w}", "{a}", "{oa}", "-m", "nearest", "{b}", "{ob}", "-q", "-f", "7"),
        "linear": outputs("linear", "{w}", "{a}", "{oa}", "{b}", "{ob}", "-q", "-f", "7"),
    }
    data = {}
    for where, (outs, argv) in runs.items():
        assert main(["apply", *argv]) == 0, where
        data[where] = [np.asarray(nib.load(o).dataobj) for o in outs]
    for k, values in enumerate((labels, labels + 1)):
        allowed = np.append(np.unique(values), 7)  # the labels, and -f's fill outside the image
        assert np.isin(data["end"][k], allowed).all()
        assert not np.isin(data["linear"][k], allowed).all()
        for where in ("before", "between"):
            np.testing.assert_array_equal(data[where][k], data["end"][k], err_msg=where)
