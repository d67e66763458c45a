"""What a new user hit (issue 20): each test here failed before its fix.

Synthetic heads (as in test_bad_inputs) and the small fixture networks keep every run at extent
32 or 64: these tests check what ilex does with options, outputs and defaults, not registration
quality.
"""

import json
import os

import numpy as np
import pytest
from conftest import fixture_path
from test_bad_inputs import E32, SHAPE, _fails, _head, _register, _save

from ilex.cli.main import main

pytestmark = pytest.mark.slow  # the full pipeline or many processes: CI runs it, `-m "not slow"` skips it

AFFINE64 = fixture_path("affine_e64.h5")


@pytest.fixture(autouse=True)
def _no_user_compilation_cache(monkeypatch):
    monkeypatch.setenv("ILEX_NO_COMPILATION_CACHE", "1")  # tests never write to ~/.cache


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A directory with a moving and a fixed head (as test_bad_inputs' `work`), the current one."""
    monkeypatch.chdir(tmp_path)
    data, affine = _head()
    _save("moving.nii.gz", data, affine)
    _save("fixed.nii.gz", _head(seed=1)[0], affine)
    return tmp_path


def _corner_origin(name="corner.nii.gz"):
    """The moving head with its world origin at a voxel corner instead of its centre: in world
    space it lies a whole field of view away from the fixed head (no overlap at all)."""
    data, affine = _head()
    affine[:3, 3] = 0.0
    affine[:3, 3] += 4.0 * np.asarray(SHAPE)  # one field of view further on every axis
    return _save(name, data, affine)


# --- the early overlap check knows which methods centre each image on itself ----------------


def test_corner_origin_pair_runs_with_methods_that_centre_each_image(work, capsys):
    # -m affine centres each cube on its own image, so the pair overlaps in network space; before
    # the fix the CLI's early check refused it in world space (and advised running -m affine).
    argv = [
        "register",
        "-m",
        "affine",
        _corner_origin(),
        "fixed.nii.gz",
        "-w",
        AFFINE64,
        "-e",
        "64",
        "-t",
        "a.lta",
        "-q",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    assert os.path.isfile("a.lta")


def test_corner_origin_pair_is_still_refused_for_deform(work, capsys):
    # deform centres both cubes on the fixed image: there the pair really does not overlap.
    line = _fails(capsys, work, _register(_corner_origin()), "corner.nii.gz", "do not overlap", "-i")
    assert "-m affine" in line


def test_overlap_advice_is_something_the_method_can_do():
    from ilex.errors import ImageFileError
    from ilex.image.io import Image
    from ilex.registration.overlap import check_overlap

    data, affine = _head()
    small = Image(data[:10], affine, "slab.nii.gz")  # a slab: most of the head lies outside its field of view
    far = affine.copy()
    far[:3, 3] += 1000.0
    with pytest.raises(ImageFileError) as info:
        check_overlap(Image(data, far, "far.nii.gz"), small, np.linalg.inv(small.affine) @ far, centred=True)
    assert "-m affine" not in str(info.value) and "-i" in str(info.value)


# --- Registrar.prepare remembers a failure where method_for looks ---------------------------


def test_prepared_failure_is_raised_again_for_the_default_method():
    import ilex
    from ilex.registration.session import Registrar

    registrar = Registrar(ilex.load(E32), method="affine")  # a deformable model cannot run -m affine
    failed = registrar.prepare([(None, 0.5)])
    assert len(failed) == 1
    registrar.model = None  # as a batch does after preparing
    with pytest.raises(TypeError, match="affine"):  # the real reason, not "no model loaded"
        registrar.method_for(None, 0.5)


# --- outputs: at least one, every format and directory checked before any work --------------


def test_register_without_any_output_is_refused(work, capsys):
    _fails(
        capsys,
        work,
        ["register", "moving.nii.gz", "fixed.nii.gz", "-m", "deform", "-w", E32, "-e", "32"],
        "no output",
        "-o",
        "-t",
        "--qc",
    )


@pytest.mark.parametrize(
    ("option", "name", "problem"),
    [
        ("-o", "out/o.txt", "-o out/o.txt"),
        ("-O", "o.png", "-O o.png"),
        ("-t", "warp.png", "-t warp.png"),
    ],
)
def test_unknown_output_format_is_refused_before_any_work(work, capsys, monkeypatch, option, name, problem):
    from ilex.registration import pipeline

    def no_work(*args, **kwargs):
        raise AssertionError("the registration ran before the output names were checked")

    monkeypatch.setattr(pipeline, "register", no_work)
    _fails(
        capsys,
        work,
        ["register", "moving.nii.gz", "fixed.nii.gz", "-m", "deform", "-w", E32, "-e", "32", option, name],
        problem,
        "format",
    )


def test_itk_warp_named_mgz_is_refused_before_any_work(work, capsys, monkeypatch):
    from ilex.registration import pipeline

    monkeypatch.setattr(pipeline, "register", lambda *a, **k: pytest.fail("registered first"))
    _fails(
        capsys,
        work,
        [
            "register",
            "moving.nii.gz",
            "fixed.nii.gz",
            "-m",
            "deform",
            "-w",
            E32,
            "-e",
            "32",
            "-t",
            "warp.mgz",
            "--warp-format",
            "itk",
        ],
        "-t warp.mgz",
        ".nii.gz",
    )


def test_every_output_creates_its_directory(work, capsys):
    # -o/-t refused a missing directory while --qc/-d created theirs; now every output does, as -d.
    argv = [
        "register",
        "moving.nii.gz",
        "fixed.nii.gz",
        "-m",
        "deform",
        "-w",
        E32,
        "-e",
        "32",
        "-q",
        "-o",
        "a/b/moved.nii.gz",
        "-t",
        "c/warp.nii.gz",
        "-T",
        "c/inverse.mgz",
        "--qc",
        "d/qc",
        "-d",
        "e/inputs",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    for path in ("a/b/moved.nii.gz", "c/warp.nii.gz", "c/inverse.mgz", "d/qc/qc.json", "e/inputs/inp_1.mgz"):
        assert os.path.isfile(path), path


def test_output_under_a_file_is_refused(work, capsys):
    with open("plain", "w") as f:
        f.write("mine")
    _fails(capsys, work, _register() + ["-T", "plain/inverse.nii.gz"], "plain", "not a directory")


# --- -m optimize: the warp written is the one optimised; what it chose is the result's ------


FAST = {"levels": (4,), "iterations": (2,)}


def _heads():
    from ilex.image.io import Image

    data, affine = _head()
    return Image(data, affine, "moving.nii.gz"), Image(_head(seed=1)[0], affine, "fixed.nii.gz")


def test_optimiser_integrates_with_the_pipelines_steps(work, capsys, monkeypatch):
    # It optimised exp(v) with 5 squaring steps while the written warp used -n (7).
    from ilex.registration.methods import optimize

    seen = []
    real = optimize.optimise_velocity

    def spy(*args, **kwargs):
        seen.append(kwargs.get("steps", 5))  # 5: optimise_velocity's own default, used before the fix
        return real(*args, **kwargs)

    monkeypatch.setattr(optimize, "optimise_velocity", spy)
    argv = [
        "register",
        "-m",
        "optimize",
        "moving.nii.gz",
        "fixed.nii.gz",
        "-e",
        "32",
        "-n",
        "3",
        "-q",
        "--levels",
        "4",
        "--iterations",
        "2",
        "-t",
        "warp.nii.gz",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    assert seen == [3]


def test_chosen_similarity_travels_with_the_result_not_the_method():
    from ilex.registration.methods import OptimizeMethod
    from ilex.registration.pipeline import register

    moving, fixed = _heads()
    method = OptimizeMethod(**FAST)
    result = register(moving, fixed, method=method, extent=32)
    assert result.transform.details["similarity"] in ("lncc", "mi")
    # Levels are labelled in mm of the working grid (the heads, capped at 32^3 voxels: coarser than 1 mm).
    coarse = f"deformable {4 * result.space.voxel_size:.3g} mm"
    assert set(result.transform.details["profile"]) >= {"pyramid and moments", coarse}
    # A method shared by threads holds nothing of one pair's.
    assert not hasattr(method, "chosen_similarity") and not hasattr(method, "profile")


def test_qc_json_records_the_similarity_version_and_options(work, capsys):
    import ilex

    argv = [
        "register",
        "-m",
        "optimize",
        "moving.nii.gz",
        "fixed.nii.gz",
        "-e",
        "32",
        "-q",
        "--similarity",
        "mi",
        "--levels",
        "4",
        "--iterations",
        "2",
        "--qc",
        "qc",
        "--warp-format",
        "itk",
        "-t",
        "w.nii.gz",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    with open("qc/qc.json", encoding="utf-8") as f:
        record = json.load(f)
    assert record["similarity"] == "mi" and record["ilex_version"] == ilex.__version__
    assert record["levels"] == [4] and record["iterations"] == [2] and record["warp_format"] == "itk"
    # The keys it had before stay.
    assert {"model", "hyper", "steps", "extent", "folding_fraction", "jacobian_min"} <= set(record)


# --- one way to give a method's options, none silently ignored ------------------------------


def test_a_method_object_and_a_different_hyper_are_refused():
    from ilex.errors import OptionError
    from ilex.registration.methods import OptimizeMethod
    from ilex.registration.pipeline import register

    moving, fixed = _heads()
    with pytest.raises(OptionError, match="hyper=0.9"):
        register(moving, fixed, method=OptimizeMethod(**FAST), hyper=0.9, extent=32)
    with pytest.raises(TypeError, match="similarity"):
        register(moving, fixed, method=OptimizeMethod(**FAST), similarity="mi", extent=32)


def test_optimiser_options_by_name():
    from ilex.registration.pipeline import register

    moving, fixed = _heads()
    result = register(moving, fixed, method="optimize", similarity="mi", hyper=0.9, extent=32, **FAST)
    assert result.transform.details["similarity"] == "mi"
    assert f"deformable {4 * result.space.voxel_size:.3g} mm" in result.transform.details["profile"]


def test_a_network_method_takes_no_optimiser_options():
    import ilex
    from ilex.registration.pipeline import register

    moving, fixed = _heads()
    with pytest.raises(TypeError, match="similarity"):
        register(moving, fixed, ilex.load(E32), method="deform", similarity="mi", extent=32)


# --- the Python defaults are the command line's --------------------------------------------


def test_python_default_weights_are_joints(monkeypatch):
    from ilex.batch import BatchSettings
    from ilex.batch.pairs import Pair
    from ilex.bundle import weights as bundle_weights
    from ilex.bundle.weights import load_weights

    loaded = []
    monkeypatch.setattr(bundle_weights, "load_weights_file", lambda path, explicit: loaded.append(path) or path)
    assert load_weights(None) == ("ilex-hub/synthmorph.affine.2", "ilex-hub/synthmorph.deform.3")
    assert loaded == ["ilex-hub/synthmorph.affine.2", "ilex-hub/synthmorph.deform.3"]
    # ... so a batch without weights or method runs joint's affine detector (and sizes memory for it).
    assert BatchSettings().runs_detector([Pair(1, "m.nii.gz", "f.nii.gz", {"trans": "w.nii.gz"})])


# --- a Registration keeps the network inputs only for -d ------------------------------------


def test_network_inputs_are_kept_only_when_asked():
    import ilex
    from ilex.registration.pipeline import register

    moving, fixed = _heads()
    model = ilex.load(E32)
    assert register(moving, fixed, model, extent=32).inputs is None
    kept = register(moving, fixed, model, extent=32, keep_inputs=True).inputs
    assert [a.shape for a in kept] == [(32, 32, 32)] * 2


# --- ilex batch -----------------------------------------------------------------------------


def _batch_csv(path="pairs.csv", extra_columns=(), rows=None):
    """Two pairs of synthetic heads, each with -o, -t and --qc in out/ (which does not exist)."""
    rows = rows or [
        ["moving.nii.gz", "fixed.nii.gz", f"out/p{k}_moved.nii.gz", f"out/p{k}_warp.nii.gz", f"out/p{k}_qc"]
        for k in (1, 2)
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write(",".join(["moving", "fixed", "o", "t", "qc", *extra_columns]) + "\n")
        f.writelines(",".join(row) + "\n" for row in rows)
    return path


DEFORM = ["-m", "deform", "-w", E32, "-e", "32"]


def _qc(k):
    with open(f"out/p{k}_qc/qc.json", encoding="utf-8") as f:
        return json.load(f)


def test_batch_rerun_with_another_lambda_redoes_the_pairs(work, capsys):
    # Before: "0 done, 2 skipped", exit 0, and a summary with λ 0.9 beside outputs made with λ 0.5.
    assert main(["batch", _batch_csv(), *DEFORM, "-r", "0.5"]) == 0
    capsys.readouterr()
    assert main(["batch", "pairs.csv", *DEFORM, "-r", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "2 done (2 redone" in out, out
    assert _qc(1)["hyper"] == 0.9 and _qc(2)["hyper"] == 0.9
    with open("pairs.summary.json", encoding="utf-8") as f:
        notes = [p["note"] for p in json.load(f)["pairs"]]
    assert all("hyper 0.5 -> 0.9" in note for note in notes), notes
    # The same settings again: nothing to do.
    assert main(["batch", "pairs.csv", *DEFORM, "-r", "0.9"]) == 0
    assert "0 done, 2 skipped" in capsys.readouterr().out


def test_batch_does_not_take_unrelated_files_for_a_finished_pair(work, capsys):
    from ilex.batch import read_pairs
    from ilex.registration.outputs import output_files

    _batch_csv()
    for _, path in output_files(read_pairs("pairs.csv")[0].outputs):  # every file of pair 1, none ilex's
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("not ilex's")
    assert main(["batch", "pairs.csv", *DEFORM]) == 0
    assert "2 done (1 redone" in capsys.readouterr().out
    assert _qc(1)["model"] == "deform"


def test_batch_csv_example_of_the_docs_runs(work, capsys):
    # docs/batch.md's example failed on every row: out/ did not exist, and -o/-t refused it.
    docs = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "batch.md")
    with open(docs, encoding="utf-8") as f:
        text = f.read()
    block = text.split("`pairs.csv` has a header row and one pair per row:\n\n```\n", 1)[1].split("```", 1)[0]
    with open("pairs.csv", "w", encoding="utf-8") as f:
        f.write(block)
    for k, name in enumerate(["sub-01_T1w.nii.gz", "sub-02_T1w.nii.gz", "mni.nii.gz"]):
        _save(name, _head(seed=k)[0], _head()[1])
    assert main(["batch", "pairs.csv", *DEFORM, "-q"]) == 0, capsys.readouterr().err
    for sub in ("sub-01", "sub-02"):
        assert os.path.isfile(f"out/{sub}_moved.nii.gz") and os.path.isfile(f"out/{sub}_qc/qc.json")


def test_batch_sets_the_optimisers_options_and_rows_override_them(work, capsys):
    rows = [
        ["moving.nii.gz", "fixed.nii.gz", "out/p1_moved.nii.gz", "out/p1_warp.nii.gz", "out/p1_qc", ""],
        ["moving.nii.gz", "fixed.nii.gz", "out/p2_moved.nii.gz", "out/p2_warp.nii.gz", "out/p2_qc", "lncc"],
    ]
    _batch_csv(extra_columns=["similarity"], rows=rows)
    argv = [
        "batch",
        "pairs.csv",
        "-m",
        "optimize",
        "-e",
        "32",
        "--similarity",
        "mi",
        "--levels",
        "4",
        "--iterations",
        "2",
        "-q",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    assert (_qc(1)["similarity"], _qc(2)["similarity"]) == ("mi", "lncc")
    assert _qc(1)["levels"] == [4] and _qc(1)["iterations"] == [2]


def test_batch_errors_name_ilex_batch(work, capsys):
    with pytest.raises(SystemExit):
        main(["batch", "pairs.csv", "--no-such-option"])
    assert "ilex batch: error: unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_batch_memory_is_checked_before_the_weights_are_loaded(work, capsys, monkeypatch):
    from ilex.bundle import weights as bundle_weights
    from ilex.errors import BundleError
    from ilex.registration import memory

    def no_loading(path, explicit):
        raise BundleError(path, "loaded before the memory check")

    monkeypatch.setattr(memory, "available_bytes", lambda: 1e6)
    monkeypatch.setattr(bundle_weights, "load_weights_file", no_loading)
    _fails(capsys, work, ["batch", _batch_csv(), *DEFORM], "ilex batch", "needs about")


def test_batch_summary_times_are_readable(work, capsys):
    import datetime

    assert main(["batch", _batch_csv(), *DEFORM, "-q"]) == 0
    with open("pairs.summary.json", encoding="utf-8") as f:
        pair = json.load(f)["pairs"][0]
    started, finished = (datetime.datetime.fromisoformat(pair[k]) for k in ("started", "finished"))
    assert started.tzinfo is not None and started <= finished


def test_batch_writes_the_network_inputs_of_a_d_column(work, capsys):
    rows = [["moving.nii.gz", "fixed.nii.gz", "out/p1_moved.nii.gz", "", "", "out/inputs"]]
    assert main(["batch", _batch_csv(extra_columns=["d"], rows=rows), *DEFORM, "-q"]) == 0, capsys.readouterr().err
    assert os.path.isfile("out/inputs/inp_1.mgz") and os.path.isfile("out/inputs/inp_2.mgz")


# --- progress: on stderr, and no bar frames when it is not a terminal -----------------------


def test_progress_off_a_terminal_is_one_line_per_stage(work, capsys):
    # The optimiser's bars wrote their frames into a log; now only a terminal gets bars (on
    # stderr), and stdout keeps one line per stage and the summary, as for the other methods.
    argv = [
        "register",
        "-m",
        "optimize",
        "moving.nii.gz",
        "fixed.nii.gz",
        "-e",
        "32",
        "--levels",
        "4",
        "--iterations",
        "2",
        "-t",
        "warp.nii.gz",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "\r" not in captured.out and captured.err == ""
    lines = captured.out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["load", "resample", "network", "compose", "qc", "write", "done"]


def test_batch_progress_off_a_terminal_is_one_line_per_pair(work, capsys):
    assert main(["batch", _batch_csv(), *DEFORM]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.strip().splitlines() == ["ilex batch: 1/2 pairs", "ilex batch: 2/2 pairs"]


# --- the Python result: moved images with their grid, the affine found ----------------------


def test_moved_is_an_image_on_the_fixed_grid(tmp_path):
    import nibabel as nib

    import ilex
    from ilex.registration.pipeline import register

    moving, fixed = _heads()
    result = register(moving, fixed, ilex.load(E32), extent=32)
    moved, back = result.moved(), result.fixed_moved()
    assert isinstance(moved, nib.Nifti1Image) and moved.shape == fixed.shape
    np.testing.assert_array_equal(moved.affine, fixed.affine)
    np.testing.assert_array_equal(back.affine, moving.affine)
    nib.save(moved, tmp_path / "moved.nii.gz")  # saved as it is, no grid to look up
    np.testing.assert_array_equal(nib.load(tmp_path / "moved.nii.gz").affine, fixed.affine)
    # The deformable model's affine part is the identity (no -i): it assumes aligned images.
    np.testing.assert_allclose(result.affine, np.eye(4), atol=1e-9)


def test_optimize_result_shows_the_affine_it_found():
    from ilex.image.io import Image
    from ilex.registration.pipeline import register

    data, affine = _head()
    shifted = affine.copy()
    shifted[:3, 3] += (6.0, -4.0, 2.0)  # the same head, 6, -4, 2 mm away in world space
    result = register(
        Image(data, shifted, "moving"), Image(data, affine, "fixed"), method="optimize", extent=32, **FAST
    )
    expected = np.eye(4)
    expected[:3, 3] = (-6.0, 4.0, -2.0)  # moving RAS -> fixed RAS undoes the shift
    # Identical network inputs (each cube centred on its own image): the largest entry's error
    # measured 0.02 (mm for the translation); 0.1 is 5 times that.
    np.testing.assert_allclose(result.affine, expected, atol=0.1)


# --- NaN background (SPM) -------------------------------------------------------------------


def test_nan_background_is_taken_as_background_and_said_once(work, capsys):
    data, affine = _head()
    data[data < 50] = np.nan  # outside the head, as SPM writes it
    _save("spm.nii.gz", data, affine)
    argv = ["register", "spm.nii.gz", "fixed.nii.gz", "-m", "deform", "-w", E32, "-e", "32", "-q", "-o", "moved.nii.gz"]
    assert main(argv) == 0, capsys.readouterr().err
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ilex register: warning: spm.nii.gz:") and "NaN" in lines[0], lines
    assert "taken as background" in lines[0]
    assert np.isfinite(nib_load("moved.nii.gz")).all()


def nib_load(path):
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj)


# --- names and words that said something else -----------------------------------------------


def test_save_bundle_says_what_it_saves(tmp_path):
    import nibabel as nib

    import ilex

    assert ilex.save_bundle is ilex.save  # the old name stays, for 0.1 code
    data, affine = _head()
    with pytest.raises(TypeError, match="nib.save"):
        ilex.save_bundle(nib.Nifti1Image(data, affine), tmp_path / "moved.nii.gz")
    assert not os.path.exists(tmp_path / "moved.nii.gz")


def test_extent_help_agrees_with_the_readme(capsys):
    import re

    readme = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
    with open(readme, encoding="utf-8") as f:
        saving = re.search(r"192 needs (\d+) % less memory", f.read()).group(1)
    with pytest.raises(SystemExit):
        main(["register", "-h"])
    assert f"192 needs about {saving} % less memory" in " ".join(capsys.readouterr().out.split())
    # What the estimate says (ilex.registration.memory), without and with the affine detector: 39 % and 37 %.
    from ilex.registration.memory import estimate_peak_bytes

    for detector in (False, True):
        assert (
            0.35 < 1 - estimate_peak_bytes(192, detector=detector) / estimate_peak_bytes(256, detector=detector) < 0.5
        )


def test_two_pairs_on_threads_keep_their_own_similarity():
    # A Registrar shares one method per (method, λ) across threads (a Dask worker's); what
    # "auto" chose for one pair must not show up on the other.
    from concurrent.futures import ThreadPoolExecutor

    from ilex.image.io import Image
    from ilex.registration.session import Registrar

    moving, fixed = _heads()
    inverted = Image(moving.data.max() - moving.data, moving.affine, "inverted")  # another contrast: MI
    registrar = Registrar(method="optimize", extent=32, **FAST)
    with ThreadPoolExecutor(2) as pool:
        same, other = pool.map(lambda m: registrar.register(m, fixed), [moving, inverted])
    assert (same.transform.details["similarity"], other.transform.details["similarity"]) == ("lncc", "mi")


def test_apply_creates_its_output_directory_too(work, capsys):
    argv = ["register", "moving.nii.gz", "fixed.nii.gz", *DEFORM, "-q", "-t", "warp.nii.gz"]
    assert main(argv) == 0, capsys.readouterr().err
    assert main(["apply", "warp.nii.gz", "moving.nii.gz", "labels/on_fixed.nii.gz", "-q"]) == 0, capsys.readouterr().err
    assert os.path.isfile("labels/on_fixed.nii.gz")
    _fails(
        capsys, work, ["apply", "warp.nii.gz", "moving.nii.gz", "labels/on_fixed.txt"], "labels/on_fixed.txt", "format"
    )
