"""`ilex batch` checks every row's input files before the first registration (issue 35): a row whose
moving, fixed or init file is missing, not a file or not an image is reported at once and fails
alone; the other rows run. Tiny synthetic images and the random-weight e32 fixture: seconds."""

import csv
import json
import os
import sys

import nibabel as nib
import numpy as np
from conftest import fixture_path

from ilex.batch import BatchSettings, run_batch
from ilex.batch.manifest import write_manifest
from ilex.batch.pairs import Pair, check_inputs
from ilex.cli.main import main
from ilex.registration.session import Registrar

E32 = fixture_path("net_e32_uniform.h5")
MARK = "-- a registration starts --"


def _blob(path, centre):
    grid = np.mgrid[:20, :20, :20].astype(np.float32)
    data = np.exp(-sum((grid[i] - centre[i]) ** 2 for i in range(3)) / 30).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0])), path)


def _inputs(d):
    _blob(d / "a.nii.gz", (9, 10, 10))
    _blob(d / "b.nii.gz", (10, 10, 11))
    (d / "notes.txt").write_text("not an image\n")
    (d / "folder.nii.gz").mkdir()


def test_check_inputs_names_the_row_the_file_and_the_problem(tmp_path):
    _inputs(tmp_path)
    a, b = str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")
    gone, text, folder = str(tmp_path / "gone.nii.gz"), str(tmp_path / "notes.txt"), str(tmp_path / "folder.nii.gz")
    pairs = [
        Pair(1, a, b, {"out_moving": "o1.nii.gz"}, id="good"),
        Pair(2, gone, b, {"out_moving": "o2.nii.gz"}, id="missing"),
        Pair(3, a, text, {"out_moving": "o3.nii.gz"}),
        Pair(4, folder, b, {"out_moving": "o4.nii.gz"}),
        Pair(5, a, b, {"out_moving": "o5.nii.gz"}, init=str(tmp_path / "gone.lta")),
        Pair(6, gone, b, {"out_moving": "o6.nii.gz"}, problem="hyper 'x' is not a number"),  # kept, not overwritten
    ]
    checked = check_inputs(pairs)
    assert [p.index for p in checked] == [1, 2, 3, 4, 5, 6]
    problems = [p.problem for p in checked]
    assert problems[0] is None
    # The texts are those `ilex register` gives for the same files.
    assert problems[1] == f"{gone}: no such moving image file"
    assert problems[2].startswith(f"{text}: not a readable NIfTI or MGZ image")
    assert problems[3] == f"{folder}: cannot read this moving image (a directory)"
    assert problems[4] == f"{tmp_path / 'gone.lta'}: no such initial-affine file"
    assert problems[5] == "hyper 'x' is not a number"


class _Refusing:
    """A registrar that notes each pair it is asked for and fails it (no model: the test is about order)."""

    def __init__(self):
        self.asked = []

    def method_for(self, method, hyper, **options):
        self.asked.append((method, hyper))
        raise RuntimeError("no model here")


def test_run_batch_fails_bad_rows_before_dispatch_and_skips_finished_ones(tmp_path):
    _inputs(tmp_path)
    a, b, gone = str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"), str(tmp_path / "gone.nii.gz")
    settings = BatchSettings(extent=32)
    # Finished earlier, its moving image deleted since: skipped, not checked.
    done = Pair(3, gone, b, {"out_moving": str(tmp_path / "done.nii.gz")}, id="done")
    (tmp_path / "done.nii.gz").write_bytes(b"made earlier")
    write_manifest(done, settings)
    pairs = [
        Pair(1, a, b, {"out_moving": str(tmp_path / "good.nii.gz")}, id="good"),
        Pair(2, gone, b, {"out_moving": str(tmp_path / "bad.nii.gz")}, id="missing"),
        done,
    ]
    registrar, seen = _Refusing(), []
    records = run_batch(pairs, settings, registrar=registrar, on_record=lambda r: seen.append(r.pair))
    assert seen == ["missing", "good"]  # the bad row is reported before the good one is dispatched
    assert len(registrar.asked) == 1  # only the good row reached the registrar
    assert [r.status for r in records] == ["failed", "failed", "skipped"]
    assert records[0].error == "RuntimeError: no model here"
    assert records[1].error == f"{gone}: no such moving image file" and records[1].seconds == 0.0


def test_ilex_batch_reports_bad_rows_before_the_first_registration(tmp_path, capsys, monkeypatch):
    _inputs(tmp_path)
    (tmp_path / "pairs.csv").write_text(
        "id,moving,fixed,o,t,i\n"
        "good,a.nii.gz,b.nii.gz,out/good_moved.nii.gz,out/good_warp.nii.gz,\n"
        "missing,gone.nii.gz,b.nii.gz,out/missing_moved.nii.gz,,\n"
        "text,a.nii.gz,notes.txt,out/text_moved.nii.gz,,\n"
        ",b.nii.gz,a.nii.gz,out/init_moved.nii.gz,,gone.lta\n"
    )
    register = Registrar.register

    def noted(self, *args, **kwargs):
        print(MARK, file=sys.stderr, flush=True)
        return register(self, *args, **kwargs)

    monkeypatch.setattr(Registrar, "register", noted)
    argv = ["batch", str(tmp_path / "pairs.csv"), "-m", "deform", "-w", E32, "-e", "32", "-q"]
    assert main(argv) == 1  # rows failed: the exit status says so
    lines = capsys.readouterr().err.splitlines()
    first = lines.index(MARK)
    before = "\n".join(lines[:first])
    for label, file, problem in [
        ("missing", "gone.nii.gz", "no such moving image file"),
        ("text", "notes.txt", "not a readable NIfTI or MGZ image"),
        ("row 4", "gone.lta", "no such initial-affine file"),
    ]:
        assert [line for line in before.splitlines() if label in line and file in line and problem in line], label
    assert "good" not in before
    assert lines.count(MARK) == 1  # the bad rows never reach the registrar
    assert (tmp_path / "out/good_moved.nii.gz").is_file() and (tmp_path / "out/good_warp.nii.gz").is_file()
    assert not [f for f in os.listdir(tmp_path / "out") if not f.startswith("good_")]
    with open(tmp_path / "pairs.summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["pair"], r["status"]) for r in rows] == [
        ("good", "done"),
        ("missing", "failed"),
        ("text", "failed"),
        ("row 4", "failed"),
    ]
    assert str(tmp_path / "gone.nii.gz") in rows[1]["error"] and str(tmp_path / "notes.txt") in rows[2]["error"]
    totals = json.loads((tmp_path / "pairs.summary.json").read_text())["totals"]
    assert totals == {"done": 1, "skipped": 0, "failed": 3}


def test_ilex_batch_refuses_optimiser_options_without_the_optimiser(tmp_path, capsys):
    """--levels, --similarity, --iterations with -m deform and no row of method optimize: one line, nothing written."""
    _inputs(tmp_path)
    (tmp_path / "pairs.csv").write_text("id,moving,fixed,o\ngood,a.nii.gz,b.nii.gz,out/good_moved.nii.gz\n")
    for option in (["--levels", "2"], ["--similarity", "mi"], ["--iterations", "5"]):
        argv = ["batch", str(tmp_path / "pairs.csv"), "-m", "deform", "-w", E32, "-e", "32", "-q", *option]
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err == (
            "ilex batch: error: --similarity, --levels and --iterations set the optimiser: use them with -m optimize "
            "(or rows whose method is optimize)"
        )
        assert not (tmp_path / "out").exists() and not (tmp_path / "pairs.summary.csv").exists()
