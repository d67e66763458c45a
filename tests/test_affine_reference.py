"""`-m affine`, `-m rigid` and `-m joint` against FreeSurfer's TensorFlow implementation.

Fixtures (tests/fixtures/README-affine.md): reduced-width random weights at extent 64 on two real
pairs, (a) Colin27 onto MNI152 2009a and (b) Colin27 with a rotated and shifted header onto Colin27;
made by bench/reference/make_affine_fixtures.py. Measured agreement (this port, CPU, float32):
detector features, barycentres and weights within 7e-7 of their maximum, the least-squares fits
within 3.2e-6; the affine matrices within 4.6e-6, the rigid ones within 1.5e-5 (the rigid
projection amplifies the fits' float32 rounding: from TensorFlow's own fit, ilex's rigid step
reproduces its rigid matrix to 3e-7, and a float64 fit is no closer); joint's mid-space roots
within 1.1e-5 (TensorFlow takes the square root in float32: the float64 root of its own fit
already differs from its output by 7.8e-6);
joint network fields within 1.5e-4 voxel, native warps within 1.1e-4 mm (mean 2.4e-5 mm).
Tolerances below are about 3x these.
"""

import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from conftest import fixture_path
from data import data_path

import ilex
from ilex.image.io import Image, load_image
from ilex.models.synthmorph_affine import barycenter, channel_weights, fit_affine
from ilex.models.synthmorph_deform.velocity import half_resolution
from ilex.registration.affine_init import read_initial_affine
from ilex.registration.methods import as_method
from ilex.registration.methods.base import scale_matrix
from ilex.registration.methods.synthmorph import _joint_velocity
from ilex.registration.pipeline import network_fields, register

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
PAIRS = ("colin_to_mni", "colinrot_to_colin")
FIT_REL = 1e-5  # measured <= 3.2e-6
MATRIX_REL = 2e-5  # affine: measured <= 4.6e-6
RIGID_REL = 5e-5  # measured <= 1.5e-5, see above
ROOT_REL = 3e-5  # measured 1.1e-5 (TensorFlow's float32 sqrtm)


def rel(a, b) -> float:
    b = np.asarray(b)
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def nets():
    return {
        k: ilex.load(fixture_path(f))
        for k, f in (("affine", "affine_e64.h5"), ("rigid", "rigid_e64.h5"), ("deform", "net_e64_mixed.h5"))
    }


@pytest.fixture(scope="module", params=PAIRS)
def case(request):
    z = dict(np.load(fixture_path(f"affine_e64_{request.param}.npz")))
    colin = load_image(data_path("colin27_t1.nii.gz"))
    if request.param == "colin_to_mni":
        moving, fixed = colin, load_image(data_path("mni2009a_t1.nii.gz"))
    else:  # the same voxels under the edited header the reference read back
        moving, fixed = Image(colin.data, z["mov_vox2ras"], "colinrot.nii.gz"), colin
    return request.param, z, moving, fixed


def test_layout_and_rigid_flag(nets):
    assert nets["affine"].rigid is False and nets["rigid"].rigid is True  # told apart by name (same layout)
    assert (
        nets["affine"].enc_nf == (8, 12, 16, 16)
        and nets["affine"].add_nf == (16, 8, 8, 8)
        and nets["affine"].num_feat == 6
    )


def test_detector_and_fits(nets, case):
    _, z, _, _ = case
    mov, fix = (half_resolution(jnp.asarray(z[k][0])) for k in ("mov", "fix"))
    f1, f2 = nets["affine"].features(mov), nets["affine"].features(fix)
    assert rel(f1, z["feat_1"][0]) < 3e-6 and rel(f2, z["feat_2"][0]) < 3e-6  # measured <= 6.5e-7
    c1, c2 = barycenter(f1, 64), barycenter(f2, 64)
    assert rel(c1, z["cen_1"][0]) < 3e-6 and rel(c2, z["cen_2"][0]) < 3e-6
    w = channel_weights(f1, f2)
    assert rel(w, z["weights"][0]) < 3e-6
    assert rel(fit_affine(c1, c2, w)[:3], z["fit_12"][0]) < FIT_REL
    assert rel(fit_affine(c2, c1, w)[:3], z["fit_21"][0]) < FIT_REL
    assert rel(nets["affine"].centred_fit(mov, fix, 64)[:3], z["aff_avg"][0]) < FIT_REL
    assert rel(nets["rigid"].centred_fit(mov, fix, 64)[:3], z["rigid_cen"][0]) < FIT_REL
    corners = np.array([[x, y, w, 1] for x in (0, 63) for y in (0, 63) for w in (0, 63)], float).T
    for kind, bound in (("affine", MATRIX_REL), ("rigid", RIGID_REL)):
        fw = nets[kind].fit(mov, fix, 64)
        assert rel(fw[:3], z[f"{kind}_fw"][0]) < bound
        assert rel(np.linalg.inv(fw)[:3], z[f"{kind}_bw"][0]) < bound
        # As displacements over the network cube: far inside the deform bound of 1e-3 voxel.
        assert np.abs((fw[:3] - z[f"{kind}_fw"][0]) @ corners).max() < 1e-3


@pytest.mark.parametrize("kind", ["affine", "rigid"])
def test_matrix_pipeline(nets, case, kind):
    _, z, moving, fixed = case
    result = register(moving, fixed, nets[kind], method=kind, extent=64, keep_inputs=True)
    # Inputs in [0, 1]: measured 6e-8 (a), 6.1e-6 (b: trilinear weights of a rotated grid in float32).
    assert np.abs(result.inputs[0] - z["mov"][0, ..., 0]).max() < 3e-5
    assert np.abs(result.inputs[1] - z["fix"][0, ..., 0]).max() < 3e-5
    bound = RIGID_REL if kind == "rigid" else MATRIX_REL
    assert rel(result.matrix_vox[:3], z[f"{kind}_vox_fw"]) < bound
    assert rel(result.affine, z[f"{kind}_lta_fw"]) < bound
    assert rel(np.linalg.inv(result.affine), z[f"{kind}_lta_bw"]) < bound
    assert rel(result.moved_header(), z[f"{kind}_H_moved_vox2ras"]) < bound
    assert rel(result.fixed_header(), z[f"{kind}_H_fixed_moved_vox2ras"]) < bound
    # Moved images: surfa's rule in float32 coordinates; intensities up to 255, measured <= 7.2e-3.
    assert np.abs(result.moved().get_fdata()[tuple(z["fixed_idx"].T)] - z[f"{kind}_moved"]).max() < 2e-2
    assert np.abs(result.fixed_moved().get_fdata()[tuple(z["moving_idx"].T)] - z[f"{kind}_fixed_moved"]).max() < 2e-2


def test_joint_mid_space_and_velocity(nets, case):
    _, z, _, _ = case
    method = as_method((nets["affine"], nets["deform"]), "joint", hyper=0.3)
    mov, fix = jnp.asarray(z["mov"][0, ..., 0]), jnp.asarray(z["fix"][0, ..., 0])
    to_mov, to_fix = method.mid_space(mov, fix)
    assert rel(to_mov[:3], z["joint_H1"][0]) < ROOT_REL and rel(to_fix[:3], z["joint_H2"][0]) < ROOT_REL
    s = scale_matrix(2)
    v, m1, m2 = _joint_velocity(method.unet, mov, fix, np.float32(s @ to_mov), np.float32(s @ to_fix), "direct")
    assert np.abs(np.asarray(m1) - z["joint_mov_1"][0]).max() < 5e-5  # inputs in [0, 1]; measured 1.1e-5
    assert np.abs(np.asarray(m2) - z["joint_mov_2"][0]).max() < 5e-5
    assert np.abs(np.asarray(v) - z["joint_svf_1"][0]).max() < 1e-4  # voxels; measured 2.3e-5 of 4.4
    fw, bw = network_fields(method.estimate(mov, fix), 5)
    if "joint_fw" in z:
        assert np.abs(np.asarray(fw) - z["joint_fw"][0]).max() < 5e-4  # measured 1.5e-4 voxel
        assert np.abs(np.asarray(bw) - z["joint_bw"][0]).max() < 5e-4
    else:
        idx = tuple(z["net_idx"].T)
        assert np.abs(np.asarray(fw)[idx] - z["joint_fw_at_net_idx"]).max() < 5e-4
        assert np.abs(np.asarray(bw)[idx] - z["joint_bw_at_net_idx"]).max() < 5e-4


def test_joint_pipeline(nets, case):
    _, z, moving, fixed = case
    result = register(moving, fixed, (nets["affine"], nets["deform"]), hyper=0.3, steps=5, extent=64)
    assert result.method == "joint" and not result.is_matrix
    fw = result.forward[tuple(z["fixed_idx"].T)] - z["joint_warp_fw"]
    bw = result.inverse[tuple(z["moving_idx"].T)] - z["joint_warp_bw"]
    # The deform bounds are 1e-3 mm max and 1e-4 mm mean; measured 1.1e-4 and 2.4e-5.
    assert np.abs(fw).max() < 5e-4 and np.abs(bw).max() < 5e-4
    assert np.abs(fw).mean() < 1e-4 and np.abs(bw).mean() < 1e-4
    assert np.abs(result.moved().get_fdata()[tuple(z["fixed_idx"].T)] - z["joint_moved"]).max() < 2e-2
    assert np.abs(result.fixed_moved().get_fdata()[tuple(z["moving_idx"].T)] - z["joint_fixed_moved"]).max() < 2e-2


def _lta_matrix(path):
    return read_initial_affine(path, np.eye(4), np.eye(4))  # identity geometries: the stored RAS matrix


@pytest.mark.parametrize("kind", ["affine", "rigid"])
def test_cli_writes_ltas_that_readers_load_back(case, kind, tmp_path):
    name, _z, moving, fixed = case
    if name != "colin_to_mni":
        path = tmp_path / "colinrot.nii.gz"
        nib.save(nib.Nifti1Image(moving.data, moving.affine), path)
        moving = load_image(path)
    weights = fixture_path(f"{kind}_e64.h5")
    fw, bw = tmp_path / "fw.lta", tmp_path / "bw.lta"
    cmd = [
        sys.executable,
        "-m",
        "ilex",
        "register",
        moving.path,
        fixed.path,
        "-m",
        kind,
        "-w",
        weights,
        "-e",
        "64",
        "-t",
        str(fw),
        "-T",
        str(bw),
        "-q",
    ]
    subprocess.run(cmd, check=True)
    reference = fixture_path(f"affine_lta/{name}_{kind}_fw.lta")
    bound = RIGID_REL if kind == "rigid" else MATRIX_REL
    assert rel(_lta_matrix(fw), _lta_matrix(reference)) < bound
    assert rel(_lta_matrix(bw), _lta_matrix(fixture_path(f"affine_lta/{name}_{kind}_bw.lta"))) < bound
    # The geometry blocks say which images the matrix joins, as FreeSurfer's own file does.
    ours = [
        ln
        for ln in fw.read_text().splitlines()
        if ln.startswith(("volume", "voxelsize", "xras", "yras", "zras", "cras"))
    ]
    theirs = [
        ln
        for ln in Path(reference).read_text().splitlines()
        if ln.startswith(("volume", "voxelsize", "xras", "yras", "zras", "cras"))
    ]
    assert len(ours) == len(theirs) == 12
    for a, b in zip(ours, theirs, strict=False):
        assert a.split("=")[0] == b.split("=")[0]
        np.testing.assert_allclose(
            [float(x) for x in a.split("=")[1].split()], [float(x) for x in b.split("=")[1].split()], atol=1e-4
        )
    # nitransforms keeps the resampling direction (fixed RAS -> moving RAS): the inverse of what the LTA stores.
    import nitransforms

    loaded = nitransforms.linear.load(str(fw), fmt="lta", moving=moving.path, reference=fixed.path)
    assert rel(np.linalg.inv(loaded.matrix), _lta_matrix(fw)) < 1e-6  # measured 4.9e-8
    # FreeSurfer's own reader (surfa, what mri_synthmorph uses) reads the same RAS matrix and geometries.
    import surfa

    lta = surfa.load_affine(str(fw))
    assert lta.space == "world" and rel(lta.matrix, _lta_matrix(fw)) < 1e-12
    assert tuple(lta.source.shape) == moving.shape and tuple(lta.target.shape) == fixed.shape
