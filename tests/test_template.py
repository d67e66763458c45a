"""`ilex template`: the shape update against analytic answers, and whole builds on a synthetic cohort
whose truth is known (tests/template_cohort.py: Colin27 reduced 3x to a 60 x 72 x 60 mm head, seen
through 6 random affines and smooth diffeomorphic warps whose log-domain means are the identity,
with intensity curves and noise), registered with `-m optimize` at extent 64.

The margins below are stated against what was measured when they were written (same seed, this
machine); each is a small fraction of the measured effect, so a build that stops improving on the
affine average fails them.
"""

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest
from data import data_path
from template_cohort import correlation, dice, make_cohort

from ilex.cli.main import main
from ilex.errors import IlexError, ImageFileError, OptionError
from ilex.template import build_template
from ilex.template.shape import MeanTransform, ShapeUpdate, fit_affine, matrix_log, world_points

EXTENT = 64
ROUNDS = 2


@pytest.fixture(autouse=True)
def _no_user_compilation_cache(monkeypatch):
    monkeypatch.setenv("ILEX_NO_COMPILATION_CACHE", "1")  # tests never write to ~/.cache


# -- the shape update, analytically --------------------------------------------------------------------


def _grid_affine(shape=(20, 22, 18), voxel=(1.5, 1.0, 2.0)):
    affine = np.diag([*voxel, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * np.asarray(voxel)
    return affine, shape


def test_fit_affine_is_exact_for_an_affine_warp():
    affine, shape = _grid_affine()
    matrix = np.array([[1.02, 0.05, 0.0, 1.5], [-0.04, 0.98, 0.03, -2.0], [0.01, 0.0, 1.05, 0.5], [0, 0, 0, 1]])
    world = world_points(affine, shape).astype(np.float64)
    disp = world @ matrix[:3, :3].T + matrix[:3, 3] - world
    fitted = fit_affine(disp.astype(np.float32), affine, np.ones(shape, bool))
    np.testing.assert_allclose(fitted, matrix, atol=1e-5)  # float32 displacements: ~1e-6 measured


def test_log_euclidean_mean_of_a_matrix_and_its_inverse_is_the_identity():
    affine, shape = _grid_affine()
    mean = MeanTransform(affine, np.ones(shape, bool))
    matrix = np.array([[1.0, -0.1, 0.0, 3.0], [0.1, 1.0, 0.0, 0.0], [0.0, 0.0, 1.1, -1.0], [0, 0, 0, 1]])
    mean.add_matrix(matrix)
    mean.add_matrix(np.linalg.inv(matrix))
    np.testing.assert_allclose(mean.mean_log, np.zeros((4, 4)), atol=1e-12)
    # while the arithmetic mean of the two is not the identity
    assert np.abs((matrix + np.linalg.inv(matrix)) / 2 - np.eye(4)).max() > 1e-3


def test_update_of_a_constant_mean_warp_moves_by_its_inverse():
    # Warps that all translate by c (template -> image): the mean transform is x + c, the update is
    # x - c (scaling and squaring of a constant field is exact), a forward warp composed with it is
    # u(x - c) - c, and an inverse warp gets + c.
    affine, shape = _grid_affine(voxel=(1.0, 1.0, 1.0))
    c = np.array([1.0, -2.0, 0.5], np.float32)
    mask = np.ones(shape, bool)
    mean = MeanTransform(affine, mask)
    for shift in (c - 0.5, c + 0.5):
        mean.add(np.broadcast_to(shift, (*shape, 3)).astype(np.float32))
    update = ShapeUpdate(mean, shape, alpha=1.0)
    inside = (slice(4, -4),) * 3
    np.testing.assert_allclose(update.mean_displacement(mask)[0], np.linalg.norm(c), rtol=1e-5)
    np.testing.assert_allclose(
        update.forward(np.zeros((*shape, 3), np.float32))[inside], np.broadcast_to(-c, (12, 14, 10, 3)), atol=1e-4
    )
    np.testing.assert_allclose(
        update.inverse(np.zeros((*shape, 3), np.float32), affine)[inside],
        np.broadcast_to(c, (12, 14, 10, 3)),
        atol=1e-4,
    )
    ramp = np.fromfunction(lambda i, j, k: i + 2.0 * j - k, shape).astype(np.float32)
    # T'(x) = T(x - c): a linear ramp is moved exactly by trilinear interpolation
    np.testing.assert_allclose(update.image(ramp)[inside], (ramp - (c[0] + 2 * c[1] - c[2]))[inside], atol=1e-4)
    assert abs(matrix_log(np.eye(4))).max() == 0


def test_sharpen_steepens_an_edge_within_the_range():
    from ilex.template.shape import sharpen

    edge = np.clip(np.fromfunction(lambda i, j, k: (i - 9.5) / 4 + 0.5, (20, 6, 6)), 0, 1).astype(np.float32)
    out = sharpen(edge)
    assert out.min() >= edge.min() and out.max() <= edge.max()
    assert np.abs(np.diff(out[:, 3, 3])).max() > np.abs(np.diff(edge[:, 3, 3])).max()
    np.testing.assert_array_equal(sharpen(np.full((5, 5, 5), 2.0, np.float32)), np.full((5, 5, 5), 2.0, np.float32))


# -- bad input, before any work ---------------------------------------------------------------------------


def _image(path, data):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4)), path)
    return str(path)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("missing", "no such image file"),
        ("four_d", "frames"),
        ("two_d", "2-D"),
        ("nan", "NaN"),
    ],
)
def test_bad_images_are_refused_before_any_work(tmp_path, capsys, bad, message):
    rng = np.random.default_rng(0)
    good = [_image(tmp_path / f"good{k}.nii.gz", rng.random((12, 12, 12))) for k in range(2)]
    data = {"four_d": rng.random((12, 12, 12, 3)), "two_d": rng.random((12, 12)), "nan": np.full((12, 12, 12), np.nan)}
    path = str(tmp_path / f"{bad}.nii.gz") if bad == "missing" else _image(tmp_path / f"{bad}.nii.gz", data[bad])
    out = tmp_path / "out"
    assert main(["template", *good, path, "-o", str(out), "-m", "optimize", "-e", "32"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and path in err and message.lower() in err.lower(), err
    assert not out.exists()  # nothing was written
    with pytest.raises(ImageFileError, match=message):
        build_template([*good, path], out, method="optimize", extent=32)


def test_fewer_than_two_images_is_an_error(tmp_path, capsys):
    path = _image(tmp_path / "one.nii.gz", np.random.default_rng(0).random((12, 12, 12)))
    assert main(["template", path, "-o", str(tmp_path / "out"), "-m", "optimize"]) == 1
    assert "at least 2 images" in capsys.readouterr().err
    with pytest.raises(OptionError, match="at least 2 images"):
        build_template([path], tmp_path / "out", method="optimize")
    # A matrix method builds a linear template (tests/test_template_linear.py); the median is its alone.
    with pytest.raises(OptionError, match="choose median or mean"):
        build_template([path, path], tmp_path / "out", method="affine", average="trimmed")
    with pytest.raises(OptionError, match="the median is for linear templates"):
        build_template([path, path], tmp_path / "out", method="optimize", average="median")
    needs = r"affine stage \(-m affine\), which needs its weights too: "
    with pytest.raises(OptionError, match=needs + "give -w synthmorph.affine.2.h5 -w synthmorph.deform.3.h5"):
        build_template([path, path], tmp_path / "out", method="deform", weights=["deform.h5"])


def test_image_list_csv(tmp_path):
    from ilex.template.inputs import read_image_list

    rng = np.random.default_rng(0)
    a, b = (_image(tmp_path / f"{n}.nii.gz", rng.random((8, 8, 8))) for n in "ab")
    (tmp_path / "list.csv").write_text("id,image\nsub-01,a.nii.gz\n,b.nii.gz\n")
    inputs = read_image_list(tmp_path / "list.csv")
    assert [(i.id, i.path, i.init) for i in inputs] == [("sub-01", a, None), ("b", b, None)]
    (tmp_path / "bad.csv").write_text("image,weight\na.nii.gz,1\n")
    with pytest.raises(OptionError, match="unknown column 'weight'"):
        read_image_list(tmp_path / "bad.csv")
    (tmp_path / "twice.csv").write_text("id,image\nx,a.nii.gz\nx,b.nii.gz\n")
    with pytest.raises(OptionError, match="given twice"):
        read_image_list(tmp_path / "twice.csv")


# -- whole builds on the synthetic cohort -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(
        tmp_path_factory.mktemp("cohort"),
        data_path("colin27_t1.nii.gz"),
        data_path("colin27_aal.nii.gz"),
        n=6,
        step=3,
        seed=0,
    )


def _build(cohort, outdir, **kwargs):
    return build_template(cohort["images"], outdir, method="optimize", extent=EXTENT, rounds=ROUNDS, **kwargs)


@pytest.fixture(scope="module")
def built(cohort, tmp_path_factory):
    return _build(cohort, tmp_path_factory.mktemp("built") / "template")


def _carried_dice(cohort, warps, tmp_path):
    """Mean Dice against the source labels of each subject's labels carried to the template by `ilex apply`."""
    source = np.asarray(nib.load(cohort["source_labels"]).dataobj)
    scores = []
    for k, (warp, labels) in enumerate(zip(warps, cohort["labels"], strict=True)):
        out = tmp_path / f"carried{k}.nii.gz"
        assert main(["apply", str(warp), labels, str(out), "-m", "nearest", "-t", "int32"]) == 0
        scores.append(dice(source, np.asarray(nib.load(out).dataobj)))
    return float(np.mean(scores))


@pytest.mark.realdata
@pytest.mark.slow
def test_template_comes_back_to_the_source_anatomy(cohort, built, tmp_path):
    source = nib.load(cohort["source"]).get_fdata()
    mask = source > 0.1 * np.percentile(source, 99)
    template = nib.load(built.path).get_fdata()
    affine_average = nib.load(os.path.join(built.outdir, "template_round0.nii.gz")).get_fdata()
    ours, baseline = correlation(template, source, mask), correlation(affine_average, source, mask)
    # Measured 0.780 against 0.465 for the plain average of the affinely aligned images (0.777 with
    # fine_every_round, round 1 at the finest level too; 0.724 against 0.416 when the affine stage's
    # coarse level stopped at 80 iterations). Label Dice below: 0.883 either way.
    assert ours > baseline + 0.2, (ours, baseline)

    # Labels through the per-image warps (ilex apply, no new code) against the same labels through
    # the affine alignment of round 0 (each image's affine to the affine average, written as a dense
    # warp here). Measured Dice 0.883 against 0.421 (116 AAL regions, voxels of 3 mm of Colin27).
    from ilex.image.warp_io import Warp, save_warp
    from ilex.template.shape import matrix_power

    with open(os.path.join(built.outdir, "state.json")) as f:
        state = json.load(f)
    affines = {k: np.asarray(m) for k, m in state["affines_round0"].items()}
    back = matrix_power(np.mean([matrix_log(m) for m in affines.values()], axis=0), -1.0)
    world = world_points(nib.load(cohort["source"]).affine, source.shape).astype(np.float64)
    affine_warps = []
    for image in built.images:
        m = affines[image.id] @ back
        path = tmp_path / f"affine_{image.id}.nii.gz"
        save_warp(
            path, Warp((world @ m[:3, :3].T + m[:3, 3] - world).astype(np.float32), nib.load(cohort["source"]).affine)
        )
        affine_warps.append(path)
    ours = _carried_dice(cohort, [image.forward for image in built.images], tmp_path)
    baseline = _carried_dice(cohort, affine_warps, tmp_path)
    assert ours > baseline + 0.3, (ours, baseline)

    # Unbiased: the mean of the per-image warps is near zero. Measured: mean |mean u| 0.095 mm
    # against 5.65 mm for the mean |u_i| (ratio 0.017).
    warps = [nib.load(image.forward).get_fdata()[:, :, :, 0, :] for image in built.images]
    size = np.mean([np.linalg.norm(u, axis=-1)[mask].mean() for u in warps])
    bias = np.linalg.norm(np.mean(warps, axis=0), axis=-1)[mask].mean()
    assert bias < 0.1 * size, (bias, size)
    assert all(image.folding_percent == 0.0 for image in built.images)


@pytest.mark.realdata
@pytest.mark.slow
def test_rounds_csv_and_outputs(built, capsys):
    with open(os.path.join(built.outdir, "rounds.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == [
        "round",
        "mean_displacement_mm",
        "max_displacement_mm",
        "mean_similarity",
        "template_change",
    ]
    assert [int(r["round"]) for r in rows] == list(range(ROUNDS + 1))
    size = [float(r["mean_displacement_mm"]) for r in rows]
    # The mean transform shrinks round after round (measured 5.8, 0.82, 0.21 mm).
    assert size[0] > size[1] > size[2], size
    assert float(rows[2]["mean_similarity"]) > float(rows[1]["mean_similarity"])
    assert all(r["averaged"] == "6" and r["failed"] == "" for r in rows)
    names = sorted(os.listdir(built.outdir))
    assert names == [
        "images",
        "qc",
        "rounds.csv",
        "state.json",
        "template.nii.gz",
        *[f"template_round{k}.nii.gz" for k in range(ROUNDS + 1)],
    ], names  # intermediates deleted
    for image in built.images:
        assert sorted(os.listdir(os.path.dirname(image.forward))) == [
            "affine.lta",
            "inverse.nii.gz",
            "moved.nii.gz",
            "warp.nii.gz",
        ]
        assert nib.load(image.moved).get_data_dtype() == np.float32
    assert sorted(os.listdir(os.path.join(built.outdir, "qc")))[-3:] == [
        "summary.csv",
        "summary.json",
        "summary.report.html",
    ]
    assert np.array_equal(
        nib.load(built.path).get_fdata(),
        nib.load(os.path.join(built.outdir, f"template_round{ROUNDS}.nii.gz")).get_fdata(),
    )


class _Killed(Exception):
    pass


@pytest.mark.realdata
@pytest.mark.slow
def test_resume_after_a_kill_gives_the_same_template(cohort, built, tmp_path, monkeypatch):
    outdir = tmp_path / "resumed"

    def kill_after_round_1(row):
        if row["round"] == 1:
            raise _Killed

    with pytest.raises(_Killed):
        _build(cohort, outdir, on_round=kill_after_round_1)
    assert not (outdir / "template.nii.gz").exists() and (outdir / "template_round1.nii.gz").exists()

    # Killed again inside round 2, after 3 of its 6 registrations.
    import ilex.batch

    real = ilex.batch.run_batch
    statuses = []

    def three_then_killed(pairs, settings, **kwargs):
        real(pairs[:3], settings, **kwargs)
        raise _Killed

    monkeypatch.setattr(ilex.batch, "run_batch", three_then_killed)
    with pytest.raises(_Killed):
        _build(cohort, outdir)

    def spy(pairs, settings, **kwargs):
        records = real(pairs, settings, **kwargs)
        statuses.append([r.status for r in records])
        return records

    monkeypatch.setattr(ilex.batch, "run_batch", spy)
    resumed = _build(cohort, outdir)
    assert statuses == [["skipped"] * 3 + ["done"] * 3]  # only round 2 ran, and only its unfinished half
    assert np.array_equal(resumed.template.get_fdata(), built.template.get_fdata())
    for a, b in zip(resumed.images, built.images, strict=True):
        assert np.array_equal(nib.load(a.forward).get_fdata(), nib.load(b.forward).get_fdata())
    with open(outdir / "rounds.csv") as f, open(os.path.join(built.outdir, "rounds.csv")) as g:
        assert [r["round"] for r in csv.DictReader(f)] == [r["round"] for r in csv.DictReader(g)]
    # Another run of a finished template does nothing; one from other images is refused.
    statuses.clear()
    _build(cohort, outdir)
    assert statuses == []
    with pytest.raises(OptionError, match="other images or settings"):
        build_template(cohort["images"][:5], outdir, method="optimize", extent=EXTENT, rounds=ROUNDS)


@pytest.mark.realdata
@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_template(cohort, built, tmp_path):
    distributed = pytest.importorskip("distributed")
    from ilex.registration.memory import estimate_peak_bytes

    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            memory_limit=0,
            resources={"MEMORY": 1.5 * estimate_peak_bytes(EXTENT)},
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        result = _build(cohort, tmp_path / "dask", client=client)
        workers = {r["worker"] for r in json.loads((tmp_path / "dask" / "qc" / "summary.json").read_text())["pairs"]}
    assert len(workers) == 2, workers  # both worker processes registered images
    assert np.array_equal(result.template.get_fdata(), built.template.get_fdata())
    # The final outputs, made on the workers, are those made in one process.
    for a, b in zip(result.images, built.images, strict=True):
        for kind in ("forward", "inverse", "moved"):
            assert np.array_equal(nib.load(getattr(a, kind)).get_fdata(), nib.load(getattr(b, kind)).get_fdata())
        assert a.matrix == b.matrix and a.folding_percent == b.folding_percent
    with open(tmp_path / "dask" / "rounds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[-1]["workers"] == "2", rows  # the round summary.json covers: both registered images


@pytest.mark.realdata
@pytest.mark.slow
def test_an_image_that_fails_is_left_out_of_the_average(cohort, tmp_path, capsys):
    (tmp_path / "broken.lta").write_text("not a transform\n")
    rows = (
        ["id,image,init"]
        + [f"s{k},{p}," for k, p in enumerate(cohort["images"][:3])]
        + [f"bad,{cohort['images'][3]},{tmp_path / 'broken.lta'}"]
    )
    (tmp_path / "cohort.csv").write_text("\n".join(rows) + "\n")
    code = main(
        [
            "template",
            str(tmp_path / "cohort.csv"),
            "-o",
            str(tmp_path / "out"),
            "-m",
            "optimize",
            "-e",
            str(EXTENT),
            "--rounds",
            "1",
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "bad" in err and "broken.lta" in err
    with open(tmp_path / "out" / "rounds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["averaged"], r["failed"]) for r in rows] == [("3", "bad"), ("3", "bad")]
    assert not (tmp_path / "out" / "images" / "bad").exists()
    with pytest.raises(IlexError, match="fewer than 2"):
        build_template(
            [cohort["images"][0], (f"x{0}", cohort["images"][1], tmp_path / "broken.lta")],
            tmp_path / "out2",
            method="optimize",
            extent=EXTENT,
            rounds=1,
        )


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("method", ["joint", "deform"])
def test_synthmorph_methods_plumbing(cohort, tmp_path, method):
    # Plumbing only: the reference's reduced random-weight networks (tests/fixtures) are no
    # registration; this checks that joint (one batch per round) and deform (an affine batch, whose
    # LTAs initialise the deformable batch) run through the rounds and write every output.
    from conftest import fixture_path

    weights = [fixture_path("affine_e64.h5"), fixture_path("net_e64_mixed.h5")]
    warp_format = "itk" if method == "joint" else "freesurfer"
    result = build_template(
        cohort["images"][:3],
        tmp_path / method,
        method=method,
        weights=weights,
        extent=EXTENT,
        rounds=1,
        keep_rounds=True,
        warp_format=warp_format,
    )
    assert [image.status for image in result.images] == ["done"] * 3
    assert os.path.isfile(result.path)
    for image in result.images:
        assert all(os.path.isfile(p) for p in (image.forward, image.inverse, image.moved, image.affine))
        assert image.affine.endswith(".txt" if warp_format == "itk" else ".lta")
        intent = int(nib.load(image.forward).header["intent_code"])
        assert intent == (1007 if warp_format == "itk" else 1006)  # ITK vector field / FreeSurfer displacement
    stage = sorted(os.listdir(tmp_path / method / "round1"))
    assert stage == (["affine", "inverse", "moved", "warps"] if method == "deform" else ["inverse", "moved", "warps"])


def test_template_inputs_from_python_get_the_ids_a_csv_would_give(tmp_path, monkeypatch):
    """Ids name output files and folders: `TemplateInput`s passed from Python are made safe exactly as
    the CSV's ids are (no `/`, no `..`), and their paths made absolute as tuples' are.

    Before: `TemplateInput("../x", ...)` kept "../x", a path part that leaves the output folder.
    """
    from ilex.template import TemplateInput
    from ilex.template.inputs import as_inputs, read_image_list

    monkeypatch.chdir(tmp_path)
    ids = ["../x", "a/b", "sub 01/../..", "..", "ok-1.v2"]
    (tmp_path / "list.csv").write_text("id,image\n" + "".join(f'"{i}",im{k}.nii.gz\n' for k, i in enumerate(ids)))
    from_csv = read_image_list(tmp_path / "list.csv")
    from_python = as_inputs([TemplateInput(i, f"im{k}.nii.gz") for k, i in enumerate(ids)])
    assert [i.id for i in from_python] == [i.id for i in from_csv] == ["x", "a_b", "sub_01", "image", "ok-1.v2"]
    assert (
        [i.path for i in from_python]
        == [i.path for i in from_csv]
        == [str(tmp_path / f"im{k}.nii.gz") for k in range(len(ids))]
    )
    for item in from_python:
        assert os.path.dirname(os.path.normpath(os.path.join("out", item.id))) == "out"


def _small_heads(tmp_path, size: int = 20) -> list[str]:
    """Three smooth heads of `size`^3 2 mm voxels, shifted by a few mm: a template in seconds."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(float(size))] * 3, indexing="ij"), -1) * 2.0 - (size - 1.0)
    images = []
    for k, shift in enumerate([(0, 0, 0), (3, -2, 1), (-2, 2, 0)]):
        blob = np.exp(-((grid - np.asarray(shift)) ** 2).sum(-1) / (2 * 6.0**2))
        data = blob * (100 + 10 * gaussian_filter(rng.normal(size=(size,) * 3), 2))
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        affine[:3, 3] = -(size - 1.0)
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), tmp_path / f"h{k}.nii.gz")
        images.append(str(tmp_path / f"h{k}.nii.gz"))
    return images


@pytest.mark.slow
@pytest.mark.parametrize("fine_every_round", [False, True])
def test_rounds_before_the_last_leave_out_the_finest_level(tmp_path, fine_every_round):
    """-m optimize on 2 mm images runs levels of 2 and 1 voxels (4 and 2 mm); a template's rounds
    before the last leave out the 1-voxel level (and its velocity stays at 2 voxels), the last
    round runs both, and `fine_every_round` runs both in every round. Read from what each
    round's registrations record in their qc.json (`levels`, in voxels of the 2 mm grid). Heads of
    another size than the compile count's below, so that its programs are not compiled here first."""
    images = _small_heads(tmp_path, 22)
    out = tmp_path / "out"
    build_template(
        images, out, method="optimize", extent=32, rounds=2, keep_rounds=True, fine_every_round=fine_every_round
    )
    for image_id in ("h0", "h1", "h2"):
        with open(out / "round1" / "qc" / image_id / "qc.json") as f:
            first = json.load(f)
        with open(out / "qc" / image_id / "qc.json") as f:
            last = json.load(f)
        assert first["levels"] == ([2, 1] if fine_every_round else [2]), first["levels"]
        assert last["levels"] == [2, 1], last["levels"]


@pytest.mark.slow
def test_a_warm_round_compiles_nothing(tmp_path):
    """Every registration of a round reuses the programs its worker compiled (issue 33): after round
    1 has compiled them, round 2 of 3 (the same shapes, not the last) compiles nothing at all,
    neither in the registrations nor in the sums or the update. Three smooth heads of 20^3 2 mm
    voxels, `-m optimize -e 32`; counted with jax's compile events (measured: 0 in round 2; round
    1 compiles dozens, so the counter does count)."""
    import jax.monitoring

    images = _small_heads(tmp_path)
    compiles, at_round_end = [0], {}

    def count(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles[0] += 1

    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        build_template(
            images,
            tmp_path / "out",
            method="optimize",
            extent=32,
            rounds=3,
            on_round=lambda row: at_round_end.setdefault(row["round"], compiles[0]),
        )
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert at_round_end[1] - at_round_end[0] > 0  # round 1 compiles the deformable registration's programs
    assert at_round_end[2] - at_round_end[1] == 0, at_round_end
