"""ITK HDF5 composite transforms (`-t/-T out.h5`, `ilex apply x.h5`), checked with the readers users have.

ITK itself (SimpleITK), antspyx (`ants.apply_transforms`, `ants.apply_transforms_to_points`, which run
antsApplyTransforms' code) and nitransforms read the files ilex writes; ilex reads the composites
`antsRegistration --write-composite-transform` writes (made here with antspyx). On real anatomy the
moving image is SPM's avg152T1 with its header turned 8° and shifted, registered to FSL's MNI152 at 2 mm.
"""

import csv

import h5py
import nibabel as nib
import numpy as np
import pytest
from data import data_path
from scipy.ndimage import gaussian_filter

import ilex
from ilex.cli.main import main
from ilex.errors import OptionError
from ilex.image.io import load_image
from ilex.image.itk_h5 import load_composite, registration_composite, save_composite
from ilex.image.lta import parse_lta
from ilex.registration.apply import apply, load_transform
from ilex.registration.methods import method_class
from ilex.registration.outputs import write_outputs

FLIP = np.array([-1.0, -1.0, 1.0])  # RAS <-> LPS


def _rotation(degrees, shift):
    t = np.deg2rad(degrees)
    m = np.eye(4)
    m[1:3, 1:3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    m[:3, 3] = shift
    return m


def _world(affine, shape):
    vox = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), -1)
    return vox @ affine[:3, :3].T + affine[:3, 3]


def _synthetic(shape=(12, 14, 10), seed=0):
    """A composite on an oblique 2 mm reference grid: a turn and shift, and a smooth field of up to 3 mm;
    returns it with the source points (RAS) of every reference voxel that it must reproduce."""
    rng = np.random.default_rng(seed)
    reference = _rotation(10, (-11.0, 7.0, -9.0)) @ np.diag([2.0, 2.0, 2.5, 1.0])
    matrix = _rotation(-6, (4.0, -3.0, 2.0))  # source RAS -> reference RAS
    bend = np.stack([gaussian_filter(rng.normal(size=shape), 2) for _ in range(3)], -1)
    world = _world(reference, shape)
    source = world @ np.linalg.inv(matrix)[:3, :3].T + np.linalg.inv(matrix)[:3, 3] + 3 * bend / np.abs(bend).max()
    grids = (reference, shape), (np.diag([1.5, 1.5, 1.5, 1.0]), (20, 20, 20))
    return registration_composite(matrix, *grids, (source - world).astype(np.float32)), world, source


def test_the_file_has_itks_layout_and_itk_reads_it(tmp_path):
    """/TransformGroup/0 the composite, /1 the affine, /2 the field (applied first), ITK's dataset names
    and types; SimpleITK (ITK's own reader) and nitransforms read it, and move points as the warp says."""
    import SimpleITK as sitk
    from nitransforms.io.itk import ITKCompositeH5

    composite, world, source = _synthetic()
    save_composite(tmp_path / "c.h5", composite)
    with h5py.File(tmp_path / "c.h5") as f:
        group = f["TransformGroup"]
        assert sorted(group) == ["0", "1", "2"] and list(group["0"]) == ["TransformType"]
        types = [group[k]["TransformType"][0] for k in "012"]
        assert types == [
            b"CompositeTransform_double_3_3",
            b"AffineTransform_double_3_3",
            b"DisplacementFieldTransform_float_3_3",
        ]
        fixed = group["2"]["TransformFixedParameters"][()]
        assert fixed.dtype == np.float64 and fixed.shape == (18,) and list(fixed[:3]) == [12, 14, 10]
        assert group["2"]["TransformParameters"].shape == (12 * 14 * 10 * 3,)
    points = world.reshape(-1, 3)[::7]
    itk = sitk.ReadTransform(str(tmp_path / "c.h5"))
    moved = np.array([itk.TransformPoint(tuple(p * FLIP)) for p in points]) * FLIP
    # measured 2.4e-7 mm (the field is float32); ilex's own reader 7e-15 mm from ITK's
    np.testing.assert_allclose(moved, source.reshape(-1, 3)[::7], atol=2e-6)
    np.testing.assert_allclose(load_composite(tmp_path / "c.h5").transform_points(points), moved, atol=2e-6)
    affine, field = ITKCompositeH5.from_filename(tmp_path / "c.h5")
    flip = np.diag([*FLIP, 1.0])
    # nitransforms turns the field to RAS: displacements and grid flipped in x and y
    np.testing.assert_allclose(np.asarray(field.dataobj) * FLIP, composite.members[1].displacement, atol=1e-6)
    np.testing.assert_allclose(field.affine, flip @ composite.members[1].affine, atol=1e-9)
    np.testing.assert_allclose(affine.to_ras(), flip @ composite.members[0].matrix @ flip, atol=1e-9)
    # between the field's voxels ITK interpolates, and so does ilex's reader (measured 2.0e-7 mm apart);
    # half a voxel beyond the grid the field is zero
    between = points[:40] + np.array([0.7, -0.4, 0.9])
    far = points[:5] + 500.0
    itk_between = np.array([itk.TransformPoint(tuple(p * FLIP)) for p in np.concatenate([between, far])]) * FLIP
    np.testing.assert_allclose(
        load_composite(tmp_path / "c.h5").transform_points(np.concatenate([between, far])), itk_between, atol=2e-6
    )


def test_writes_are_reproducible_and_read_back(tmp_path):
    """Two writes of one composite are the same bytes; reading gives the members and grids back."""
    composite, *_ = _synthetic()
    save_composite(tmp_path / "a.h5", composite)
    save_composite(tmp_path / "b.h5", composite)
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()
    back = load_composite(tmp_path / "a.h5")
    np.testing.assert_array_equal(back.members[1].displacement, composite.members[1].displacement)
    np.testing.assert_allclose(back.members[0].matrix, composite.members[0].matrix, rtol=0, atol=1e-12)
    for got, want in zip((back.reference, back.source), (composite.reference, composite.source), strict=True):
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1] == want[1]


def _heads(d):
    for k, shift in enumerate([(0, 0, 0), (4, -2, 2)]):
        rng = np.random.default_rng(k)
        grid = np.stack(np.meshgrid(*[np.arange(20.0)] * 3, indexing="ij"), -1) * 2.0 - 19.0 - np.asarray(shift)
        blob = np.exp(-(grid**2).sum(-1) / (2 * 5.0**2))
        data = np.where(blob > 1e-3, blob * (100 + gaussian_filter(rng.normal(size=(20,) * 3), 2) * 10), 0.0)
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        affine[:3, 3] = -19.0
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), d / f"h{k}.nii.gz")
    return str(d / "h1.nii.gz"), str(d / "h0.nii.gz")


def test_register_and_batch_write_h5_for_warps_and_matrices(tmp_path):
    """`ilex register -t/-T x.h5` for a warp method and a matrix method (tests/seam_methods.py), and
    `ilex batch` rows ending in .h5: the files hold what the API's warps and LTAs hold, and
    `ilex apply` of them gives the CLI's moved images."""
    mov, fix = _heads(tmp_path)
    warp, matrix = "seam_methods:ConstantFlow", "seam_methods:CentreShift"
    t, T, o = (str(tmp_path / n) for n in ("w.h5", "wi.h5", "o.nii.gz"))
    assert main(["register", mov, fix, "-m", warp, "-t", t, "-T", T, "-o", o, "-e", "32", "-q"]) == 0
    result = ilex.register(mov, fix, method=method_class(warp)(), extent=32)
    fixed, moving = load_image(fix), load_image(mov)
    forward = load_transform(t).warp
    # measured 0 (the split into affine and field and back is exact here); asked 1e-6 mm
    np.testing.assert_allclose(forward.displacement, result.forward, atol=1e-6)
    np.testing.assert_allclose(load_transform(T).warp.displacement, result.inverse, atol=1e-6)
    assert forward.source_shape == moving.shape and np.allclose(forward.source_affine, moving.affine)
    assert main(["apply", t, mov, str(tmp_path / "a.nii.gz"), "-q"]) == 0
    moved = nib.load(o).get_fdata()  # measured equal; asked 1e-6 of the maximum
    np.testing.assert_allclose(nib.load(tmp_path / "a.nii.gz").get_fdata(), moved, atol=1e-6 * moved.max())

    assert main(["register", mov, fix, "-m", matrix, "-t", str(tmp_path / "m.h5"), "-e", "32", "-q"]) == 0
    composite = load_composite(tmp_path / "m.h5")
    assert composite.is_linear and len(composite.members) == 1
    affine = ilex.register(mov, fix, method=method_class(matrix)(), extent=32).affine
    np.testing.assert_allclose(composite.ras_matrix(), affine, atol=1e-9)
    saved = load_transform(tmp_path / "m.h5")  # the fixed grid is recorded: no --reference needed
    assert saved.target_shape == fixed.shape and np.allclose(saved.target_affine, fixed.affine)

    rows = [
        {"moving": mov, "fixed": fix, "t": "b.h5", "T": "bi.h5", "method": ""},
        {"moving": mov, "fixed": fix, "t": "bm.h5", "T": "bm.lta", "method": matrix},
    ]
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["batch", str(tmp_path / "pairs.csv"), "-m", warp, "-e", "32", "-q"]) == 0
    np.testing.assert_allclose(load_transform(tmp_path / "b.h5").warp.displacement, result.forward, atol=1e-6)
    with open(tmp_path / "bm.lta") as f:
        lta = parse_lta(f.read()).matrix
    np.testing.assert_allclose(load_composite(tmp_path / "bm.h5").ras_matrix(), np.linalg.inv(lta), atol=1e-6)


def test_bad_h5_files_are_one_line_errors(tmp_path, capsys):
    """Not HDF5, HDF5 without /TransformGroup, a transform type ilex does not read, and a warp asked
    for header-only output: one line on stderr naming the file, exit 1."""
    mov, _ = _heads(tmp_path)
    (tmp_path / "text.h5").write_text("#Insight Transform File V1.0\n")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f.create_dataset("x", data=[1.0])
    with h5py.File(tmp_path / "bspline.h5", "w") as f:
        for k, kind in enumerate(["CompositeTransform_double_3_3", "BSplineTransform_double_3_3"]):
            f.create_dataset(f"TransformGroup/{k}/TransformType", data=np.array([kind], h5py.string_dtype("ascii")))
    composite, *_ = _synthetic()
    save_composite(tmp_path / "warp.h5", composite)
    cases = {
        "text.h5": "not an HDF5 file",
        "empty.h5": "no /TransformGroup",
        "bspline.h5": "/TransformGroup/1 is a BSplineTransform_double_3_3; ilex reads AffineTransform",
        "warp.h5": "holds a displacement field; header-only output needs a matrix",
    }
    for name, problem in cases.items():
        header = ["-H"] if name == "warp.h5" else []
        assert main(["apply", str(tmp_path / name), mov, str(tmp_path / "out.nii.gz"), *header]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(tmp_path / name) in err and problem in err, err


# --- against antspyx on real anatomy -------------------------------------------------------------


@pytest.fixture(scope="module")
def anatomy(tmp_path_factory):
    """FSL's MNI152 at 2 mm (fixed) and avg152T1 with its header turned 8° about x and shifted (moving)."""
    d = tmp_path_factory.mktemp("anatomy")
    avg = nib.load(data_path("spm_avg152t1.nii"))
    nib.save(
        nib.Nifti1Image(avg.get_fdata(dtype=np.float32), _rotation(8, (6.0, -4.0, 3.0)) @ avg.affine), d / "mov.nii.gz"
    )
    return str(d / "mov.nii.gz"), data_path("fsl_mni152_t1_2mm.nii.gz"), d


def _inside(target: np.ndarray, source_points: np.ndarray, source) -> np.ndarray:
    """Voxels in the head of `target` whose source point lies a voxel or more inside the source's grid:
    at the edge of a field of view ITK reads half a voxel further out than ilex (which fills)."""
    vox = source_points @ np.linalg.inv(source.affine)[:3, :3].T + np.linalg.inv(source.affine)[:3, 3]
    inside = np.all((vox >= 1) & (vox <= np.asarray(source.shape) - 2), axis=-1)
    return inside & (target > 0.1 * target.max())


def _ants_points(points_ras, transform):
    import ants
    import pandas as pd

    frame = pd.DataFrame(points_ras * FLIP, columns=["x", "y", "z"])
    return ants.apply_transforms_to_points(3, frame, [str(transform)]).to_numpy() * FLIP


@pytest.mark.realdata
@pytest.mark.slow
def test_ants_reads_ilex_composites(anatomy):
    """`-m optimize` avg152T1 -> MNI152 written as -t/-T .h5: `ants.apply_transforms` of each moves the
    image as ilex's -o/-O do, and `ants.apply_transforms_to_points` moves points where ilex's warps do."""
    import ants

    mov, fix, d = anatomy
    result = ilex.register(mov, fix, method="optimize")
    outputs = {
        "trans": d / "fwd.h5",
        "inverse": d / "inv.h5",
        "out_moving": d / "o.nii.gz",
        "out_fixed": d / "O.nii.gz",
    }
    write_outputs(result, outputs)
    moving, fixed = load_image(mov), load_image(fix)
    for transform, image, target, ours, field in (
        (d / "fwd.h5", moving, fixed, d / "o.nii.gz", result.forward),
        (d / "inv.h5", fixed, moving, d / "O.nii.gz", result.inverse),
    ):
        theirs = ants.apply_transforms(
            ants.image_read(str(target.path)), ants.image_read(str(image.path)), [str(transform)]
        ).numpy()
        world = _world(target.affine, target.shape)
        mask = _inside(target.data, world + field, image)
        ilex_moved = nib.load(ours).get_fdata()
        # measured 1.9e-6 (forward) and 3.4e-6 (inverse) of the image's maximum
        assert np.abs(theirs - ilex_moved)[mask].max() < 2e-5 * image.data.max()
        assert mask.sum() > 0.5 * (target.data > 0.1 * target.data.max()).sum()
        points = world[mask][::997]
        # measured 1.5e-5 and 1.1e-5 mm (float32 fields; displacements up to 19 mm)
        np.testing.assert_allclose(_ants_points(points, transform), (world + field)[mask][::997], atol=1e-4)
        # ilex reading its own file: measured 2.9e-6 and 8.8e-7 of the image's maximum
        np.testing.assert_allclose(apply(transform, image).get_fdata(), ilex_moved, atol=1e-5 * image.data.max())


@pytest.mark.realdata
@pytest.mark.slow
def test_ilex_reads_ants_composites(anatomy):
    """antsRegistration's SyN Composite.h5 and InverseComposite.h5 (through antspyx): `ilex apply` of each
    moves the image as `ants.apply_transforms` does, and ilex's reader moves points as antspyx does."""
    import ants

    mov, fix, d = anatomy
    fixed_ants, moving_ants = ants.image_read(fix), ants.image_read(mov)
    out = ants.registration(
        fixed_ants, moving_ants, type_of_transform="SyN", write_composite_transform=True, outprefix=str(d / "ants_")
    )
    forward, inverse = out["fwdtransforms"], out["invtransforms"]
    assert forward.endswith("Composite.h5") and inverse.endswith("InverseComposite.h5")
    moving, fixed = load_image(mov), load_image(fix)
    with pytest.raises(OptionError, match="name the image to resample onto"):
        apply(inverse, fixed)  # ANTs' inverse applies its affine first: the grid is not in the file
    for transform, image, target, reference in ((forward, moving, fixed, None), (inverse, fixed, moving, mov)):
        theirs = ants.apply_transforms(
            ants.image_read(str(target.path)), ants.image_read(str(image.path)), [transform]
        ).numpy()
        ours = apply(transform, image, reference=reference).get_fdata()
        world = _world(target.affine, target.shape)
        composite = load_composite(transform)
        source = composite.transform_points(world)
        mask = _inside(target.data, source, image)
        # measured 2.7e-6 (forward) and 5.6e-6 (inverse) of the image's maximum
        assert np.abs(theirs - ours)[mask].max() < 2e-5 * image.data.max()
        assert mask.sum() > 0.5 * (target.data > 0.1 * target.data.max()).sum()
        points = world[mask][::997]
        # measured 1.6e-5 and 1.4e-5 mm (displacements up to 18 mm)
        np.testing.assert_allclose(source[mask][::997], _ants_points(points, transform), atol=1e-4)


# --- -i: an initial affine from an ITK .h5 --------------------------------------------------------


def test_init_reads_ilex_affine_h5_and_refuses_a_warp(tmp_path, capsys):
    """`ilex register -i x.h5` with ilex's own affine composite (`-m <matrix method> -t x.h5`) starts
    where the same registration's LTA does; an .h5 holding a displacement field is refused in one line
    naming the file, exit 1, nothing written."""
    from ilex.registration.affine_init import read_initial_affine

    mov, fix = _heads(tmp_path)
    matrix, warp = "seam_methods:CentreShift", "seam_methods:ConstantFlow"
    for name in ("m.h5", "m.lta"):
        assert main(["register", mov, fix, "-m", matrix, "-t", str(tmp_path / name), "-e", "32", "-q"]) == 0
    moving, fixed = load_image(mov), load_image(fix)
    from_h5, from_lta = (read_initial_affine(tmp_path / n, moving.affine, fixed.affine) for n in ("m.h5", "m.lta"))
    assert not np.allclose(from_lta, np.linalg.inv(fixed.affine) @ moving.affine)  # a real shift, not identity
    # measured equal (the LTA's decimals hold this shift exactly); asked 1e-6 voxels
    np.testing.assert_allclose(from_h5, from_lta, atol=1e-6)
    for name in ("m.h5", "m.lta"):
        out = str(tmp_path / f"w_{name}.nii.gz")
        assert main(["register", mov, fix, "-m", warp, "-i", str(tmp_path / name), "-t", out, "-e", "32", "-q"]) == 0
    # measured equal (displacements up to 3.0 mm); asked 1e-5 mm
    np.testing.assert_allclose(
        load_transform(tmp_path / "w_m.h5.nii.gz").warp.displacement,
        load_transform(tmp_path / "w_m.lta.nii.gz").warp.displacement,
        atol=1e-5,
    )

    assert main(["register", mov, fix, "-m", warp, "-t", str(tmp_path / "warp.h5"), "-e", "32", "-q"]) == 0
    capsys.readouterr()
    out = tmp_path / "never.nii.gz"
    assert main(["register", mov, fix, "-m", warp, "-i", str(tmp_path / "warp.h5"), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "warp.h5") in err, err
    assert "holds a displacement field" in err and "(-i) must be a matrix" in err, err
    assert not out.exists()


@pytest.mark.realdata
@pytest.mark.slow
def test_init_reads_ants_linear_composites(anatomy):
    """antsRegistration's Composite.h5 and InverseComposite.h5 of an affine registration (through antspyx):
    `-i` reads each as the map antspyx applies to points (fixed -> moving for the forward composite)."""
    import ants

    from ilex.registration.affine_init import read_initial_affine

    mov, fix, d = anatomy
    out = ants.registration(
        ants.image_read(fix),
        ants.image_read(mov),
        type_of_transform="Affine",
        write_composite_transform=True,
        outprefix=str(d / "ants_affine_"),
    )
    forward, inverse = out["fwdtransforms"], out["invtransforms"]
    assert forward.endswith("Composite.h5") and inverse.endswith("InverseComposite.h5")
    moving, fixed = load_image(mov), load_image(fix)
    for transform, image, target in ((forward, moving, fixed), (inverse, fixed, moving)):
        vox = read_initial_affine(transform, image.affine, target.affine)  # image voxels -> target voxels
        world = _world(target.affine, target.shape)[::9, ::9, ::9].reshape(-1, 3)
        pull = np.linalg.inv(target.affine @ vox @ np.linalg.inv(image.affine))  # target RAS -> image RAS
        ilex_points = world @ pull[:3, :3].T + pull[:3, 3]
        # measured 1.7e-5 mm both ways (float32 parameters; points move up to 25 mm)
        np.testing.assert_allclose(ilex_points, _ants_points(world, transform), atol=1e-4)
