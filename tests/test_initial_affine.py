"""`-i`: an initial affine (LTA or ITK text) brings a displaced moving image back into alignment."""

import numpy as np
import pytest
from conftest import fixture_path
from data import data_path

import ilex
from ilex.errors import FileProblem
from ilex.image.io import Image, load_image
from ilex.registration.affine_init import read_initial_affine
from ilex.registration.pipeline import register

SHIFT = np.array([10.0, -6.0, 4.0])  # mm, RAS


def _lta(matrix, kind=1):
    rows = "\n".join(" ".join(f"{v:.6f}" for v in row) for row in matrix)
    return f"# transform file\ntype      = {kind} # LINEAR_RAS_TO_RAS\nnxforms   = 1\nmean      = 0.0 0.0 0.0\nsigma     = 1.0\n1 4 4\n{rows}\n"


def _itk(matrix_fix_to_mov_ras):
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ matrix_fix_to_mov_ras @ np.diag([-1.0, -1.0, 1.0, 1.0])
    params = list(lps[:3, :3].ravel()) + list(lps[:3, 3])
    return ("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
            f"Parameters: {' '.join(map(str, params))}\nFixedParameters: 0 0 0\n")


@pytest.fixture(scope="module")
def images():
    colin = load_image(data_path("colin27_t1.nii.gz"))
    moved_header = colin.affine.copy()
    moved_header[:3, 3] += SHIFT  # the same anatomy, 10 mm further right etc. in world space
    return colin, Image(colin.data, moved_header, "shifted"), load_image(data_path("mni2009a_t1.nii.gz"))


@pytest.mark.parametrize("kind", ["lta", "itk"])
def test_initial_affine_undoes_a_shift(images, tmp_path, kind):
    colin, shifted, mni = images
    mov_to_fix = np.eye(4)
    mov_to_fix[:3, 3] = -SHIFT
    path = tmp_path / ("init.lta" if kind == "lta" else "init.txt")
    path.write_text(_lta(mov_to_fix) if kind == "lta" else _itk(np.linalg.inv(mov_to_fix)))
    init = read_initial_affine(path, shifted.affine, mni.affine)
    model = ilex.load(fixture_path("net_e64_mixed.h5"))
    aligned = register(shifted, mni, model, hyper=0.3, steps=5, extent=64, init_vox=init)
    plain = register(colin, mni, model, hyper=0.3, steps=5, extent=64)
    assert np.abs(aligned.inputs[0] - plain.inputs[0]).max() <= 1e-4
    without = register(shifted, mni, model, hyper=0.3, steps=5, extent=64)
    assert np.abs(without.inputs[0] - plain.inputs[0]).max() > 0.1


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
