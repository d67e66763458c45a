"""The seam: a `Method` that ilex does not know by name runs everywhere a built-in one does.

`seam_methods.CentreShift` (a matrix) and `seam_methods.ConstantFlow` (a warp) are reached by
import path, as a user's own method is. What each is (matrix or warp, weights, options) the batch,
the template, the CLI and the output checks must read from the class; a table of known names
refused them ("unknown model") before the seam was read from the objects.
"""

import csv

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

import ilex
from ilex.batch import BatchSettings, read_pairs, run_batch
from ilex.cli.main import main
from ilex.image.lta import parse_lta
from ilex.registration.methods import method_class, resolve_method_name

MATRIX = "seam_methods:CentreShift"
WARP = "seam_methods.ConstantFlow"  # the dotted form works too


def _head(path, shift, seed):
    # A smooth blob with some texture, 2 mm voxels, its centre `shift` mm off the grid's.
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(20.0)] * 3, indexing="ij"), -1) * 2.0 - 19.0 - np.asarray(shift)
    blob = np.exp(-(grid**2).sum(-1) / (2 * 5.0**2))
    data = np.where(blob > 1e-3, blob * (100 + gaussian_filter(rng.normal(size=(20,) * 3), 2) * 10), 0.0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -19.0
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    d = tmp_path_factory.mktemp("heads")
    for k, shift in enumerate([(0, 0, 0), (4, -2, 2), (-2, 2, 0)]):
        _head(d / f"h{k}.nii.gz", shift, k)
    return d


def test_names_resolve_to_the_users_classes():
    from seam_methods import CentreShift, ConstantFlow

    assert method_class(MATRIX) is CentreShift and method_class(WARP) is ConstantFlow
    assert resolve_method_name(MATRIX) == MATRIX
    assert method_class("def").name == "deform"  # abbreviations as before
    with pytest.raises(ValueError, match="not a subclass of ilex.Method"):
        method_class("seam_methods:np")
    with pytest.raises(ValueError, match="cannot import the method"):
        method_class("seam_methods:Nothing")
    with pytest.raises(ValueError, match="unknown model"):
        method_class("banana")


def _lta(path) -> np.ndarray:
    return parse_lta(open(path, encoding="utf-8").read()).ras_to_ras()


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_a_users_matrix_method_moves_the_head_where_it_is(heads):
    """The seam carries a user's matrix to world space: h1's blob sits (4, -2, 2) mm off h0's on
    the same grid, so the moving -> fixed matrix is a translation by minus that (measured 0.074 mm
    off at most, the blobs' texture and resampling; the bound is about 3 times that)."""
    from seam_methods import CentreShift

    result = ilex.register(heads / "h1.nii.gz", heads / "h0.nii.gz", method=CentreShift(), extent=32)
    assert result.method == "centre-shift" and result.is_matrix
    np.testing.assert_allclose(result.affine[:3, :3], np.eye(3), atol=1e-9)
    np.testing.assert_allclose(result.affine[:3, 3], [-4.0, 2.0, -2.0], atol=0.25)


def test_run_batch_writes_a_users_lta_and_warp(heads, tmp_path):
    """Both methods through `run_batch`, each row naming its method by import path: the LTA and
    the warp equal what `ilex.register` and `write_outputs` give for the same pair. Before the
    seam was read from the objects every such row failed ("unknown model")."""
    pair = {"moving": str(heads / "h1.nii.gz"), "fixed": str(heads / "h0.nii.gz")}
    _write_csv(
        tmp_path / "pairs.csv",
        [{**pair, "t": "m.lta", "method": MATRIX}, {**pair, "t": "w.nii.gz", "method": WARP}],
    )
    records = run_batch(read_pairs(tmp_path / "pairs.csv"), BatchSettings(method="optimize", weights=(), extent=32))
    assert [r.status for r in records] == ["done", "done"], [r.error for r in records]
    for name, out in ((MATRIX, "m.lta"), (WARP, "w.nii.gz")):
        result = ilex.register(heads / "h1.nii.gz", heads / "h0.nii.gz", method=method_class(name)(), extent=32)
        ilex.write_outputs(result, {"trans": tmp_path / f"api_{out}"})
        if out.endswith(".lta"):
            np.testing.assert_allclose(_lta(tmp_path / out), _lta(tmp_path / f"api_{out}"), atol=1e-9)
        else:
            warp = nib.load(tmp_path / out).get_fdata()
            np.testing.assert_array_equal(warp, nib.load(tmp_path / f"api_{out}").get_fdata())
            assert np.abs(warp).max() > 0.5  # the constant flow moved something


def test_run_batch_with_a_method_object(heads, tmp_path):
    """The bug the seam fixes: a `Method` object with a new name, given to the batch as an
    object, failed every pair ("unknown model"): the output check looked its name up in a table."""
    from seam_methods import ConstantFlow

    _write_csv(
        tmp_path / "pairs.csv",
        [{"moving": str(heads / "h1.nii.gz"), "fixed": str(heads / "h0.nii.gz"), "t": "w.nii.gz"}],
    )
    settings = BatchSettings(method=ConstantFlow(), weights=(), extent=32)
    records = run_batch(read_pairs(tmp_path / "pairs.csv"), settings)
    assert [r.status for r in records] == ["done"], [r.error for r in records]
    assert (tmp_path / "w.nii.gz").is_file()


def test_configured_methods_key_a_batch():
    """A batch keys its prepared methods by (method, λ, options), so every Method object must hash:
    `OptimizeMethod`, a mutable dataclass, did not, and `run_batch` with one failed as a whole."""
    from ilex.batch.pairs import Pair
    from ilex.registration.methods import OptimizeMethod, RefineMethod

    assert hash(OptimizeMethod(hyper=0.3)) == hash(OptimizeMethod(hyper=0.3))
    pairs = [
        Pair(0, "m.nii.gz", "f.nii.gz", {"trans": "w.nii.gz"}),
        Pair(1, "m.nii.gz", "f.nii.gz", {"trans": "v.nii.gz"}),
    ]
    registrar = BatchSettings(method=OptimizeMethod(hyper=0.3), weights=()).registrar(pairs)
    assert registrar.memory_estimate() > 0
    assert isinstance(hash(RefineMethod(first=method_class(MATRIX)())), int)


def test_ilex_register_by_import_path(heads, tmp_path, capsys):
    """`ilex register -m package.module:Class` writes the LTA the API gives, and refuses what the
    class says it cannot do (a warp from a matrix method is fine, -H from a warp method is not;
    --refine of a method that is not `refinable`)."""
    h1, h0 = str(heads / "h1.nii.gz"), str(heads / "h0.nii.gz")
    assert main(["register", h1, h0, "-m", MATRIX, "-t", str(tmp_path / "cli.lta"), "-e", "32", "-q"]) == 0
    result = ilex.register(h1, h0, method=method_class(MATRIX)(), extent=32)
    np.testing.assert_allclose(_lta(tmp_path / "cli.lta"), result.affine, atol=1e-6)
    assert main(["register", h1, h0, "-m", WARP, "-o", str(tmp_path / "o.nii.gz"), "-H", "-e", "32", "-q"]) == 1
    err = capsys.readouterr().err
    assert "header-only output is for methods that give a matrix (affine, rigid), not constant-flow" in err
    assert main(["register", h1, h0, "-m", WARP, "--refine", "-t", str(tmp_path / "w.nii.gz"), "-q"]) == 1
    assert "--refine: refining -m seam_methods.ConstantFlow (a constant velocity) is not supported" in (
        capsys.readouterr().err
    )


def test_ilex_batch_by_import_path(heads, tmp_path, capsys):
    """`ilex batch -m package.module:Class`: the warp method writes its warp and refuses an LTA
    (the method's own `yields_matrix`, read from the class), while a row naming the matrix method
    by path in its `method` column writes its LTA, the API's matrix."""
    pair = {"moving": str(heads / "h1.nii.gz"), "fixed": str(heads / "h0.nii.gz")}
    rows = [{**pair, "t": "w.nii.gz", "method": ""}, {**pair, "t": "w.lta", "method": ""}]
    _write_csv(tmp_path / "pairs.csv", [*rows, {**pair, "t": "m.lta", "method": MATRIX}])
    assert main(["batch", str(tmp_path / "pairs.csv"), "-m", WARP, "-e", "32", "-q"]) == 1
    err = capsys.readouterr().err
    assert "-m constant-flow gives a warp, not a matrix" in err and "unknown model" not in err
    assert (tmp_path / "w.nii.gz").is_file() and not (tmp_path / "w.lta").exists()
    with open(tmp_path / "pairs.summary.csv", newline="") as f:
        assert [row["status"] for row in csv.DictReader(f)] == ["done", "failed", "done"]
    result = ilex.register(pair["moving"], pair["fixed"], method=method_class(MATRIX)(), extent=32)
    np.testing.assert_allclose(_lta(tmp_path / "m.lta"), result.affine, atol=1e-6)


@pytest.mark.slow
def test_ilex_template_with_a_users_method(heads, tmp_path, capsys):
    """`ilex template -m package.module:Class`: a warp method with no weights and no prior
    affine (its class says so) builds a template from the optimiser's affine round 0, and every
    image gets its warp and its affine as an LTA."""
    images = [str(heads / f"h{k}.nii.gz") for k in range(3)]
    out = tmp_path / "template"
    assert main(["template", *images, "-o", str(out), "-m", WARP, "-e", "32", "--rounds", "1", "-q"]) == 0
    assert (out / "template.nii.gz").is_file()
    for k in range(3):
        files = sorted(p.name for p in (out / "images" / f"h{k}").iterdir())
        assert files == ["affine.lta", "inverse.nii.gz", "moved.nii.gz", "warp.nii.gz"]
    # Round 1 averaged the user's warps: each is the constant flow's translation, |(1.5, 0, -1)| mm
    # (the grid is 1 mm) = 1.8028 mm; measured 1.802776.
    with open(out / "rounds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["averaged"] for row in rows] == ["3", "3"]
    assert abs(float(rows[1]["mean_displacement_mm"]) - np.sqrt(3.25)) < 1e-3
    # The matrix method builds a linear template, by what its class says (it loads no weights: it runs itself).
    linear = tmp_path / "m"
    assert main(["template", *images, "-o", str(linear), "-m", MATRIX, "-e", "32", "--rounds", "1", "-q"]) == 0
    for k in range(3):
        files = sorted(p.name for p in (linear / "images" / f"h{k}").iterdir())
        assert files == ["affine.h5", "affine.lta", "affine.txt", "moved.nii.gz"]
    # Its centre shifts average to none: the mean of the three translations written is 0 (the heads'
    # centres are 0, (4, -2, 2) and (-2, 2, 0) mm off the grid's).
    shifts = [_lta(linear / "images" / f"h{k}" / "affine.lta")[:3, 3] for k in range(3)]
    assert np.abs(np.mean(shifts, axis=0)).max() < 1e-6
