"""`-i`: an initial affine (LTA or ITK text) brings a displaced moving image back into alignment."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import fixture_path
from data import data_path

import ilex
from ilex.errors import FileProblem
from ilex.image.io import Image, load_image
from ilex.image.lta import LinearTransform, VolumeGeometry, format_lta
from ilex.registration.affine_init import read_initial_affine
from ilex.registration.pipeline import register

SHIFT = np.array([10.0, -6.0, 4.0])  # mm, RAS


def _lta(matrix, kind=1):
    rows = "\n".join(" ".join(f"{v:.6f}" for v in row) for row in matrix)
    return (
        f"# transform file\ntype      = {kind} # LINEAR_RAS_TO_RAS\nnxforms   = 1\n"
        f"mean      = 0.0 0.0 0.0\nsigma     = 1.0\n1 4 4\n{rows}\n"
    )


def _itk(matrix_fix_to_mov_ras):
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ matrix_fix_to_mov_ras @ np.diag([-1.0, -1.0, 1.0, 1.0])
    params = list(lps[:3, :3].ravel()) + list(lps[:3, 3])
    return (
        "#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
        f"Parameters: {' '.join(map(str, params))}\nFixedParameters: 0 0 0\n"
    )


@pytest.fixture(scope="module")
def images():
    colin = load_image(data_path("colin27_t1.nii.gz"))
    moved_header = colin.affine.copy()
    moved_header[:3, 3] += SHIFT  # the same anatomy, 10 mm further right etc. in world space
    return colin, Image(colin.data, moved_header, "shifted"), load_image(data_path("mni2009a_t1.nii.gz"))


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("kind", ["lta", "itk"])
def test_initial_affine_undoes_a_shift(images, tmp_path, kind):
    colin, shifted, mni = images
    mov_to_fix = np.eye(4)
    mov_to_fix[:3, 3] = -SHIFT
    path = tmp_path / ("init.lta" if kind == "lta" else "init.txt")
    path.write_text(_lta(mov_to_fix) if kind == "lta" else _itk(np.linalg.inv(mov_to_fix)))
    init = read_initial_affine(path, shifted.affine, mni.affine)
    model = ilex.load(fixture_path("net_e64_mixed.h5"))
    aligned = register(shifted, mni, model, hyper=0.3, steps=5, extent=64, init_vox=init, keep_inputs=True)
    plain = register(colin, mni, model, hyper=0.3, steps=5, extent=64, keep_inputs=True)
    assert np.abs(aligned.inputs[0] - plain.inputs[0]).max() <= 1e-4
    without = register(shifted, mni, model, hyper=0.3, steps=5, extent=64, keep_inputs=True)
    assert np.abs(without.inputs[0] - plain.inputs[0]).max() > 0.1


@pytest.mark.realdata
def test_bad_initial_affine(images, tmp_path):
    colin, _, mni = images
    bad = tmp_path / "bad.lta"
    bad.write_text("hello\n")
    with pytest.raises(FileProblem, match="bad.lta"):
        read_initial_affine(bad, colin.affine, mni.affine)
    singular = tmp_path / "singular.lta"
    singular.write_text(_lta(np.zeros((4, 4))))
    with pytest.raises(FileProblem, match="singular"):
        read_initial_affine(singular, colin.affine, mni.affine)


# --- the reader on its own: synthetic geometry, no downloads --------------------------------

MOV = np.array([[-1.0, 0, 0, 90], [0, 0, 1.2, -126], [0, -1.1, 0, 72], [0, 0, 0, 1]])
FIX = np.array([[0.9, 0.1, 0, -80], [-0.1, 0.9, 0, -110], [0, 0, 1.0, -60], [0, 0, 0, 1]])
RAS = np.array([[0.98, 0.05, 0.0, 3.5], [-0.05, 0.98, 0.02, -7.25], [0.0, -0.02, 1.01, 11.0], [0, 0, 0, 1]])
EXPECTED = np.linalg.inv(FIX) @ RAS @ MOV


def _read(tmp_path, name, text, **shapes):
    path = tmp_path / name
    path.write_text(text)
    return read_initial_affine(path, MOV, FIX, **shapes)


def _refused(tmp_path, name, text, match):
    with pytest.raises(FileProblem, match=match) as info:
        _read(tmp_path, name, text)
    assert name in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kind",
    [
        "AffineTransform_double_3_3",
        "AffineTransform_float_3_3",
        "MatrixOffsetTransformBase_double_3_3",
        "MatrixOffsetTransformBase_float_3_3",
    ],
)
def test_itk_affine_kinds_are_read(tmp_path, kind):
    text = _itk(np.linalg.inv(RAS)).replace("AffineTransform_double_3_3", kind)
    np.testing.assert_allclose(_read(tmp_path, "t.txt", text), EXPECTED, atol=1e-9)


@pytest.mark.parametrize(
    "kind",
    [
        "AffineTransfor_double_3_3",
        "AffineTransformm_double_3_3",
        "AffineTransform_double_2_2",
        "MatrixOffsetTransformBaseTransform_double_3_3",
        "Euler3DTransform_double_3_3",
    ],
)
def test_other_itk_kinds_are_refused(tmp_path, kind):
    _refused(tmp_path, "t.txt", _itk(np.linalg.inv(RAS)).replace("AffineTransform_double_3_3", kind), "3-D affine")


def test_itk_without_parameters_is_refused(tmp_path):
    text = "#Insight Transform File V1.0\nTransform: AffineTransform_double_3_3\nFixedParameters: 0 0 0\n"
    _refused(tmp_path, "t.txt", text, "one 'Parameters:' line")


def _vox_lta(src_affine=MOV, dst_affine=FIX, shapes=((160, 200, 180), (182, 218, 182))):
    src, dst = VolumeGeometry.from_affine(src_affine, shapes[0]), VolumeGeometry.from_affine(dst_affine, shapes[1])
    return format_lta(LinearTransform(0, EXPECTED, src, dst))


def test_voxel_lta_of_these_images_is_read(tmp_path):
    np.testing.assert_allclose(_read(tmp_path, "v.lta", _vox_lta()), EXPECTED, atol=1e-9)
    shapes = {"moving_shape": (160, 200, 180), "fixed_shape": (182, 218, 182)}
    np.testing.assert_allclose(_read(tmp_path, "v.lta", _vox_lta(), **shapes), EXPECTED, atol=1e-9)


def test_voxel_lta_of_other_images_is_refused(tmp_path):
    # FreeSurfer refuses a voxel-to-voxel LTA whose stored geometry differs beyond 1e-3.
    moved = MOV.copy()
    moved[0, 3] += 0.01
    _refused(tmp_path, "v.lta", _vox_lta(src_affine=moved), "src volume info differs")
    _refused(tmp_path, "v.lta", _vox_lta(dst_affine=FIX @ np.diag([1.01, 1, 1, 1])), "dst volume info differs")
    with pytest.raises(FileProblem, match="shape"):
        _read(tmp_path, "v.lta", _vox_lta(), moving_shape=(160, 200, 181))
    moved[0, 3] = MOV[0, 3] + 5e-4  # within FreeSurfer's tolerance
    np.testing.assert_allclose(_read(tmp_path, "v.lta", _vox_lta(src_affine=moved)), EXPECTED, atol=1e-2)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda t: t.replace("1 4 4\n", ""), "matrix|unexpected line"),
        (lambda t: t[: t.index("src volume info")], "needs valid src volume info"),
        (lambda t: t.replace("valid = 1  # volume info valid", "valid = 0", 1), "needs valid src volume info"),
        (lambda t: "\n".join(ln for ln in t.splitlines() if not ln.startswith("cras")), "lacks cras"),
        (
            lambda t: "\n".join(ln for ln in t.splitlines() if not ln.startswith("type")),
            "neither a FreeSurfer LTA|no 'type",
        ),
        (lambda t: t.replace("volume = 160 200 180", "volume = 160 200"), "expected 3 numbers"),
        (lambda t: t.replace("nxforms   = 1", "nxforms   = 2"), "nxforms"),
        (lambda t: t.replace("type      = 0", "type      = 2"), "not supported"),
    ],
)
def test_damaged_voxel_lta_is_refused_in_one_line(tmp_path, damage, match):
    _refused(tmp_path, "v.lta", damage(_vox_lta()), match)


def test_ras_lta_without_matrix_is_refused(tmp_path):
    _refused(tmp_path, "r.lta", _lta(RAS).split("1 4 4")[0], "no '1 4 4' matrix")


def test_ants_mat_is_read(tmp_path):
    from scipy.io import savemat

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.linalg.inv(RAS) @ np.diag([-1.0, -1.0, 1.0, 1.0])
    params = np.concatenate([lps[:3, :3].ravel(), lps[:3, 3]])[:, None]
    savemat(tmp_path / "a.mat", {"AffineTransform_double_3_3": params, "fixed": np.zeros((3, 1))}, format="4")
    np.testing.assert_allclose(read_initial_affine(tmp_path / "a.mat", MOV, FIX), EXPECTED, atol=1e-9)


def test_fuzzed_initial_affines_fail_cleanly():
    """Random damage: a one-line FileProblem or (for structure-only damage) the same matrix.

    Runs tests/fuzz_initial_affine.py in a child process, so that a crash of a native reader
    fails this test instead of killing the suite.
    """
    fuzz = os.path.join(os.path.dirname(__file__), "fuzz_initial_affine.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), *sys.path])}
    proc = subprocess.run(
        [sys.executable, fuzz, "--cases", "200", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert proc.returncode in (0, 1), f"the reader process died (status {proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout)
    assert report["failures"] == [], report["failures"][:5]
    for target, counts in report["results"].items():
        assert sum(counts.values()) == 200 and counts.get("clean error", 0) > 0, (target, counts)
