"""Many pairs: the warm `Registrar` (no recompilation), `ilex batch` (resume, summary, exit status,
a bad pair failing alone) and the Dask run on a real two-process `LocalCluster` (identical outputs,
a killed worker's pairs rerun, never half-written).

Pairs are small copies of the fetched images (every third voxel, 3 mm, some shifted or cropped)
registered by the random-weight e32 fixture at extent 32: these tests check the batch machinery,
not registration quality.
"""

import csv
import itertools
import json
import os
import signal

import nibabel as nib
import numpy as np
import pytest
from conftest import fixture_path
from data import data_path

from ilex.batch import BatchSettings, read_pairs, run_batch
from ilex.batch.manifest import MANIFEST_SUFFIX
from ilex.batch.pairs import Pair
from ilex.bundle import weights as bundle_weights
from ilex.cli.main import main
from ilex.errors import OptionError

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

E32 = fixture_path("net_e32_uniform.h5")
GOOD = [
    ("colin.nii.gz", "mni.nii.gz"),
    ("mni.nii.gz", "colin_shift.nii.gz"),
    ("colin_shift.nii.gz", "mni4.nii.gz"),
    ("mni4.nii.gz", "colin.nii.gz"),
]
OUTPUTS = {"o": "moved.nii.gz", "t": "fw.nii.gz", "T": "bw.mgz", "qc": "qc"}


def _small(name, out, step=3, crop=0, shift=(0.0, 0.0, 0.0)):
    img = nib.load(data_path(name))
    data = np.asarray(img.dataobj, np.float32)[crop::step, crop::step, crop::step]
    affine = img.affine.copy()
    affine[:3, :3] = img.affine[:3, :3] * step
    affine[:3, 3] = img.affine[:3, :3] @ np.full(3, crop) + img.affine[:3, 3] + np.asarray(shift)
    nib.save(nib.Nifti1Image(data, affine), out)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    _small("colin27_t1.nii.gz", d / "colin.nii.gz")
    _small("mni2009a_t1.nii.gz", d / "mni.nii.gz")
    _small("colin27_t1.nii.gz", d / "colin_shift.nii.gz", crop=2, shift=(3.0, -2.0, 1.0))
    _small("mni2009a_t1.nii.gz", d / "mni4.nii.gz", step=4)
    (d / "broken.nii.gz").write_bytes(b"not an image")
    return d


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["moving", "fixed", *OUTPUTS])
        writer.writerows(rows)


def _rows(images, out, bad_at=2):
    """GOOD pairs with outputs out/pK_*, and a pair with a broken moving image at `bad_at`."""
    rows = [
        [str(images / m), str(images / f), *(f"{out}/p{k}_{name}" for name in OUTPUTS.values())]
        for k, (m, f) in enumerate(GOOD, 1)
    ]
    rows.insert(
        bad_at, [str(images / "broken.nii.gz"), str(images / "mni.nii.gz"), f"{out}/bad_moved.nii.gz", "", "", ""]
    )
    return rows


def _files(directory):
    return sorted(os.path.relpath(os.path.join(r, f), directory) for r, _, fs in os.walk(directory) for f in fs)


@pytest.fixture(scope="module")
def sequential(images, tmp_path_factory):
    """Each good pair registered by its own `ilex register` call: the reference outputs."""
    out = tmp_path_factory.mktemp("sequential")
    for k, (m, f) in enumerate(GOOD, 1):
        argv = [
            "register",
            str(images / m),
            str(images / f),
            "-m",
            "deform",
            "-w",
            E32,
            "-e",
            "32",
            "-q",
            "-o",
            str(out / f"p{k}_moved.nii.gz"),
            "-t",
            str(out / f"p{k}_fw.nii.gz"),
            "-T",
            str(out / f"p{k}_bw.mgz"),
            "--qc",
            str(out / f"p{k}_qc"),
        ]
        assert main(argv) == 0
    return out


# The QC report records the run's times and memory (report.html, report.npz): never the same twice.
_TIMED = ("report.html", "report.npz")


def _assert_same_outputs(out, reference):
    names = [n for n in _files(reference)]
    assert len(names) == 4 * 8
    for name in names:
        if os.path.basename(name) not in _TIMED:
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_pairs_file_columns(tmp_path):
    (tmp_path / "pairs.csv").write_text(
        "moving,fixed,o,O,trans,T,qc,d,i,r,method,id\n"
        "a.nii.gz,b.nii.gz,out/a.nii.gz,,w.nii.gz,,qcdir,,init.lta,0.3,deform,sub-01\n"
        "c.nii.gz,/abs/d.nii.gz,,,,,,,,x,,\n"
        "c.nii.gz,d.nii.gz,,,,,,,,,,\n"
    )
    first, second, third = read_pairs(tmp_path / "pairs.csv")
    assert first.moving == str(tmp_path / "a.nii.gz") and first.init == str(tmp_path / "init.lta")
    assert first.outputs == {
        "out_moving": str(tmp_path / "out" / "a.nii.gz"),
        "trans": str(tmp_path / "w.nii.gz"),
        "qc": str(tmp_path / "qcdir"),
    }
    assert (first.hyper, first.method, first.label, first.problem) == (0.3, "deform", "sub-01", None)
    assert second.fixed == "/abs/d.nii.gz" and "not a number" in second.problem and second.label == "row 2"
    assert "no output" in third.problem


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("moving,fixed,o,colour\na,b,c,d\n", "unknown column 'colour'"),
        ("moving,o\na,b\n", "no fixed column"),
        ("moving,fixed,o,out_moving\na,b,c,d\n", "given twice"),
        ("moving,fixed,o\na,b,x.nii.gz\nc,d,x.nii.gz\n", "row 2 and row 1 both write"),
    ],
)
def test_pairs_file_refused_before_any_work(tmp_path, text, message):
    (tmp_path / "pairs.csv").write_text(text)
    with pytest.raises(OptionError, match=message):
        read_pairs(tmp_path / "pairs.csv")


def test_memory_estimate_counts_the_detector_where_a_pair_runs_it():
    from ilex.registration.memory import estimate_peak_bytes

    deform = Pair(0, "m.nii", "f.nii", method="deform")
    rigid = Pair(1, "m.nii", "f.nii", method="rig")  # an abbreviation, as -m takes it
    broken = Pair(2, "m.nii", "f.nii", method="affine", problem="λ 'x' is not a number")  # fails alone, never runs
    settings = BatchSettings(extent=256)
    assert settings.memory_estimate([deform, broken]) == estimate_peak_bytes(256)
    assert (
        settings.memory_estimate([deform, rigid]) == estimate_peak_bytes(256, detector=True) > estimate_peak_bytes(256)
    )
    # Rows without a method run the command's -m, or else what the weights are: joint for two files.
    assert BatchSettings(method="joint").runs_detector([Pair(0, "m", "f")])
    assert BatchSettings(weights=("a.h5", "d.h5")).runs_detector([Pair(0, "m", "f")])
    assert not BatchSettings(weights="d.h5").runs_detector([Pair(0, "m", "f")])
    assert not BatchSettings(method="joint").runs_detector([Pair(0, "m", "f", method="optimize")])


def test_registrar_does_not_recompile(images):
    import jax

    from ilex.image.io import load_image
    from ilex.registration.session import CompileCounter, Registrar

    jax.clear_caches()  # what other tests compiled in this process must not hide the first compilation
    registrar = Registrar.from_weights(E32, extent=32, prepare=[(None, 0.5)])
    moving, fixed = images / "colin.nii.gz", images / "mni.nii.gz"
    with CompileCounter() as first:
        a = registrar.register(moving, fixed)
        a.forward, a.moved()
    assert "jit(_deform_velocity)" in first.compiles and "jit(_integrate_velocity)" in first.compiles
    # The same shapes again, given as nibabel images this time: nothing traced, nothing compiled.
    with CompileCounter() as second:
        b = registrar.register(nib.load(moving), nib.load(fixed))
        b.forward, b.moved()
    assert second.traces == {} and second.compiles == {}
    np.testing.assert_array_equal(a.forward, b.forward)
    # Another image shape: only the steps on the images' own grids compile, never the network.
    with CompileCounter() as third:
        c = registrar.register(load_image(images / "colin_shift.nii.gz"), fixed)
        c.forward, c.moved()
    assert third.compiles and not {"jit(_deform_velocity)", "jit(_integrate_velocity)"} & set(third.compiles)
    # A λ that was not prepared cannot be made once the hypernetwork is let go.
    with pytest.raises(OptionError, match="hyper=0.7: no model loaded"):
        registrar.register(moving, fixed, hyper=0.7)
    assert jax.default_backend() == "cpu"


@pytest.fixture(scope="module")
def local_batch(images, sequential, tmp_path_factory):
    work = tmp_path_factory.mktemp("local")
    _write_csv(work / "pairs.csv", _rows(images, work / "out"))
    (work / "out").mkdir()
    status = main(
        ["batch", str(work / "pairs.csv"), "-m", "deform", "-w", E32, "-e", "32", "-q", "--no-compilation-cache"]
    )
    return work, status


def test_batch_matches_register_and_a_bad_pair_fails_alone(local_batch, sequential):
    work, status = local_batch
    assert status == 1  # one pair failed
    _assert_same_outputs(work / "out", sequential)
    assert not (work / "out" / "bad_moved.nii.gz").exists()


def test_summary_files(local_batch):
    work, _ = local_batch
    with open(work / "pairs.summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["done", "done", "failed", "done", "done"]
    assert list(rows[0])[:10] == [
        "pair",
        "index",
        "moving",
        "fixed",
        "status",
        "seconds",
        "peak_memory_gib",
        "folding_percent",
        "error",
        "worker",
    ]
    assert "broken.nii.gz" in rows[2]["error"] and "not a readable" in rows[2]["error"]
    assert all(float(r["seconds"]) > 0 and float(r["peak_memory_gib"]) > 0 for r in rows if r["status"] == "done")
    # Folding in the summary is the QC report's.
    qc = json.loads((work / "out" / "p1_qc" / "qc.json").read_text())
    assert float(rows[0]["folding_percent"]) == pytest.approx(100 * qc["folding_fraction"], abs=1e-4)
    document = json.loads((work / "pairs.summary.json").read_text())
    assert document["totals"] == {"done": 4, "skipped": 0, "failed": 1}
    assert document["settings"]["extent"] == 32 and len(document["pairs"]) == 5


def test_rerun_skips_done_pairs(local_batch, images, capsys, monkeypatch):
    work, _ = local_batch
    out = work / "out"
    before = {name: os.stat(out / name).st_mtime_ns for name in _files(out)}
    os.remove(out / "p2_bw.mgz")  # pair 2 lost one output: only it runs again
    status = main(
        ["batch", str(work / "pairs.csv"), "-m", "deform", "-w", E32, "-e", "32", "--summary", str(work / "rerun")]
    )
    assert status == 1
    with open(work / "rerun.csv", newline="") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["skipped", "done", "failed", "skipped", "skipped"]
    after = {name: os.stat(out / name).st_mtime_ns for name in _files(out)}
    assert sorted(after) == sorted(before)
    assert [n for n in before if after[n] != before[n] and n != "p2_bw.mgz"] == [
        n for n in before if n.startswith("p2_") and n != "p2_bw.mgz"
    ]
    assert "1 done, 3 skipped, 1 failed" in capsys.readouterr().out
    # Without the bad row everything is there already: nothing runs (no weights are loaded), the exit status is 0.
    _write_csv(work / "good.csv", [r for r in _rows(images, out) if "broken" not in r[0]])
    monkeypatch.setattr(
        bundle_weights, "load_weights_file", lambda *a, **k: pytest.fail("weights loaded for a finished batch")
    )
    assert main(["batch", str(work / "good.csv"), "-m", "deform", "-w", E32, "-e", "32", "-q"]) == 0


def test_a_pair_that_fails_while_its_outputs_are_written_fails_alone(images, tmp_path, monkeypatch):
    # Outputs are written on a second thread while the next pair registers: a failure there is
    # that pair's alone, records keep the pairs' order, and no file of the failed pair lands.
    from ilex.batch import one_pair

    write = one_pair.write_outputs

    def failing_write(result, outputs, **kwargs):
        if "p2_" in str(outputs["out_moving"]):
            raise OSError("disk full")
        return write(result, outputs, **kwargs)

    monkeypatch.setattr(one_pair, "write_outputs", failing_write)
    pairs = [
        Pair(k, str(images / m), str(images / f), {"out_moving": str(tmp_path / f"p{k}_moved.nii.gz")})
        for k, (m, f) in enumerate(GOOD, 1)
    ]
    pairs.append(Pair(5, str(images / "colin.nii.gz"), str(images / "mni.nii.gz"), {"trans": str(tmp_path / "p5.lta")}))
    records = run_batch(pairs, BatchSettings(weights=E32, extent=32))
    assert [r.index for r in records] == [1, 2, 3, 4, 5]
    assert [r.status for r in records] == ["done", "failed", "done", "done", "failed"]
    assert records[1].error == "OSError: disk full"
    # A name the method cannot write fails before any registration, with the reason.
    assert "gives a warp, not a matrix" in records[4].error and records[4].seconds < 1
    assert sorted(os.listdir(tmp_path)) == [
        f"p{k}_moved.nii.gz{suffix}" for k in (1, 3, 4) for suffix in ("", MANIFEST_SUFFIX)
    ]


def test_every_method_per_row(images, tmp_path):
    # One batch, joint's two weight files, and each row its own method (some abbreviated) and λ.
    affine, deform = fixture_path("affine_e64.h5"), fixture_path("net_e64_mixed.h5")
    rows = [("", ""), ("def", "0.3"), ("affine", ""), ("rig", ""), ("opt", "0.7"), ("fancy", "")]
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["moving", "fixed", "o", "qc", "m", "r", "id"])
        for k, (method, hyper) in enumerate(rows):
            writer.writerow(
                [
                    images / "colin_shift.nii.gz",
                    images / "mni.nii.gz",
                    f"out/{k}.nii.gz",
                    f"out/qc{k}",
                    method,
                    hyper,
                    f"row{k}",
                ]
            )
    (tmp_path / "out").mkdir()
    assert main(["batch", str(tmp_path / "pairs.csv"), "-w", affine, "-w", deform, "-e", "64", "-q"]) == 1
    summary = json.loads((tmp_path / "pairs.summary.json").read_text())["pairs"]
    assert [r["status"] for r in summary] == ["done"] * 5 + ["failed"]
    assert summary[5]["error"].startswith("method 'fancy': unknown model; choose one of joint, deform, affine, rigid")
    for k, (method, hyper) in enumerate(
        zip(["joint", "deform", "affine", "rigid", "optimize"], [0.5, 0.3, 0.5, 0.5, 0.7], strict=False)
    ):
        record = json.loads((tmp_path / "out" / f"qc{k}" / "qc.json").read_text())
        assert (record["model"], record["hyper"]) == (method, hyper)
    # The optimiser row is the weightless -m optimize (not a refinement of the loaded network),
    # exactly as `ilex register -m optimize` runs it.
    assert (
        main(
            [
                "register",
                str(images / "colin_shift.nii.gz"),
                str(images / "mni.nii.gz"),
                "-m",
                "optimize",
                "-r",
                "0.7",
                "-e",
                "64",
                "-q",
                "-o",
                str(tmp_path / "optimize.nii.gz"),
            ]
        )
        == 0
    )
    assert (tmp_path / "optimize.nii.gz").read_bytes() == (tmp_path / "out" / "4.nii.gz").read_bytes()
    # And a whole batch of -m optimize needs no weights at all.
    with open(tmp_path / "optimize.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [
                ["moving", "fixed", "o", "r"],
                [images / "colin_shift.nii.gz", images / "mni.nii.gz", "batch_optimize.nii.gz", "0.7"],
            ]
        )
    assert main(["batch", str(tmp_path / "optimize.csv"), "-m", "optimize", "-e", "64", "-q"]) == 0
    assert (tmp_path / "optimize.nii.gz").read_bytes() == (tmp_path / "batch_optimize.nii.gz").read_bytes()


def test_dask_two_processes_with_a_killed_worker(images, sequential, tmp_path_factory, monkeypatch):
    distributed = pytest.importorskip("distributed")
    from ilex.registration.memory import estimate_peak_bytes

    work = tmp_path_factory.mktemp("dask")
    (work / "out").mkdir()
    _write_csv(work / "pairs.csv", _rows(images, work / "out"))
    pairs = read_pairs(work / "pairs.csv")
    # The workers share one compilation cache: the worker restarted after the kill loads the
    # network from it instead of compiling again.
    monkeypatch.setenv("ILEX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
    monkeypatch.delenv("ILEX_NO_COMPILATION_CACHE")
    need = estimate_peak_bytes(32)
    # Two threads per worker, but memory for one registration: never two pairs at once on a worker.
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=True,
            memory_limit=0,
            resources={"MEMORY": 1.5 * need},
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        pids = client.run(os.getpid)
        killed = []

        def kill_a_busy_worker(record):
            if killed:
                return
            busy = [address for address, keys in client.processing().items() if keys and address in pids]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])

        records = run_batch(pairs, BatchSettings(weights=E32, extent=32), client=client, on_record=kill_a_busy_worker)
    assert killed, "no worker was busy after the first pair: nothing was killed"
    assert [r.status for r in records] == ["done", "done", "failed", "done", "done"]
    assert "not a readable" in records[2].error
    # Every pair, including the one whose worker died under it, is complete and as `ilex register` wrote it.
    _assert_same_outputs(work / "out", sequential)
    by_worker = {}
    for r in records:
        by_worker.setdefault(r.worker, []).append((r.started, r.finished))
    for spans in by_worker.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), "a worker ran two pairs at once"


def test_compilation_cache_location_and_switch(tmp_path, monkeypatch):
    from ilex import _cache

    monkeypatch.delenv("ILEX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _cache.cache_dir() == str(tmp_path / "xdg" / "ilex" / "jax")
    monkeypatch.setenv("ILEX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert _cache.cache_dir() == str(tmp_path / "mine")
    assert _cache.cache_disabled() and _cache.enable_compilation_cache() is None  # the autouse fixture's switch
    monkeypatch.setenv("ILEX_NO_COMPILATION_CACHE", "0")
    assert not _cache.cache_disabled()
    assert _cache.enable_compilation_cache(enable=False) is None
    (tmp_path / "file").write_text("")
    with pytest.warns(UserWarning, match="compilation cache disabled"):
        assert _cache.enable_compilation_cache(tmp_path / "file" / "jax") is None


_CHILD = """
import sys, time
from ilex._cache import enable_compilation_cache
assert enable_compilation_cache() is not None
from ilex.registration.session import CompileCounter, Registrar
with CompileCounter() as c:
    t = time.perf_counter()
    Registrar.from_weights(sys.argv[1], extent=32).register(sys.argv[2], sys.argv[3])
print(c.cache_hits, time.perf_counter() - t)
"""


def test_second_process_reads_the_compiled_network_from_the_cache(images, tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.delenv("ILEX_NO_COMPILATION_CACHE")
    monkeypatch.setenv("ILEX_COMPILATION_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    cmd = [sys.executable, "-c", _CHILD, E32, str(images / "colin.nii.gz"), str(images / "mni.nii.gz")]
    runs = [subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split() for _ in range(2)]
    (hits_first, _), (hits_second, _) = runs
    assert int(hits_first) == 0 and int(hits_second) >= 1  # at least the network, the one slow compilation
    assert os.listdir(tmp_path / "cache")


# ---------------------------------------------------------------------------------------------
# Where a row's paths point, and rows that depend on each other


def test_paths_mean_what_they_mean_in_a_shell_in_the_csv_folder(tmp_path):
    """Relative paths resolve against the CSV's folder; absolute paths are kept; `..` climbs out of
    it as the operating system climbs (from the folder itself, not from the name it was reached by),
    so `../derivatives/...` beside a study reached through a symbolic link lands beside the study.

    Before: `..` was removed from the text (os.path.normpath), so through the link the output went
    to the link's parent, `tmp/derivatives`, a folder the user never named.
    """
    study = tmp_path / "disk" / "study"
    study.mkdir(parents=True)
    (tmp_path / "link").symlink_to(study)
    elsewhere = tmp_path / "elsewhere" / "x_warp.nii.gz"
    (study / "pairs.csv").write_text(
        "moving,fixed,o,t,qc\n"
        f"sub-01.nii.gz,../templates/mni.nii.gz,../derivatives/sub-01.nii.gz,{elsewhere},./qc/../qc/sub-01\n"
    )
    (pair,) = read_pairs(tmp_path / "link" / "pairs.csv")
    assert os.path.realpath(tmp_path / "link" / "..") == str(tmp_path / "disk")  # what a shell's `ls ..` lists
    assert pair.moving == str(tmp_path / "link" / "sub-01.nii.gz")  # no `..`: the name as the user gave it
    assert pair.fixed == str(tmp_path / "disk" / "templates" / "mni.nii.gz")
    assert pair.outputs["out_moving"] == str(tmp_path / "disk" / "derivatives" / "sub-01.nii.gz")
    assert pair.outputs["trans"] == str(elsewhere)
    assert pair.outputs["qc"] == str(study / "qc" / "sub-01")
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "batch.md"), encoding="utf-8") as f:
        docs = f.read()
    assert "Absolute paths are used as they are" in docs and "`..`" in docs


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (  # the reader after the writer
            "moving,fixed,o\na.nii.gz,b.nii.gz,out/a.nii.gz\nout/a.nii.gz,c.nii.gz,out/c.nii.gz\n",
            r"row 2 reads .*/out/a\.nii\.gz, which row 1 writes",
        ),
        (  # the reader before the writer, named by id, through its initial affine
            (
                "id,moving,fixed,t,init\nlate,a.nii.gz,b.nii.gz,out/a_warp.nii.gz,out/b.lta\n"
                "early,b.nii.gz,c.nii.gz,out/b.lta,\n"
            ),
            r"late reads .*/out/b\.lta, which early writes",
        ),
        (  # a file inside another row's QC folder
            "moving,fixed,o,qc\na.nii.gz,b.nii.gz,out/a.nii.gz,qc_a\nqc_a/jacobian.nii.gz,b.nii.gz,out/j.nii.gz,\n",
            r"row 2 reads .*/qc_a/jacobian\.nii\.gz, which row 1 writes",
        ),
    ],
)
def test_a_row_reading_another_rows_output_is_refused(tmp_path, text, message):
    """One row's output as another row's input would make the result depend on the rows' order (and
    on Dask, on timing): refused before any work, naming both rows and the file. Before: read
    without complaint (only two rows writing one file were refused)."""
    (tmp_path / "pairs.csv").write_text(text)
    with pytest.raises(OptionError, match=message) as caught:
        read_pairs(tmp_path / "pairs.csv")
    assert "\n" not in str(caught.value)


def test_the_registrar_reads_a_shared_fixed_file_once(tmp_path, monkeypatch):
    # A batch to one atlas (and a template round) registers every image to the same file: the
    # registrar keeps its voxels while the file is the same one, and reads it again once it changes.
    from ilex.registration import session

    path = str(tmp_path / "atlas.nii.gz")
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.random((6, 7, 8)).astype(np.float32), np.eye(4)), path)
    reads = []
    real = session.load_image
    monkeypatch.setattr(session, "load_image", lambda p, **kw: reads.append(p) or real(p, **kw))
    registrar = session.Registrar(method="optimize")
    first = registrar._fixed_image(path)
    assert registrar._fixed_image(path) is first and len(reads) == 1
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 7, 8), np.float32) + rng.random((6, 7, 8)), np.eye(4)), other)
    assert registrar._fixed_image(str(other)).path == str(other) and len(reads) == 2
    nib.save(nib.Nifti1Image(2 * rng.random((6, 7, 8)).astype(np.float32), np.eye(4)), path)  # rewritten
    os.utime(path, ns=(1, 1))  # a different modification time even on a coarse clock
    again = registrar._fixed_image(path)
    assert again is not first and not np.array_equal(again.data, first.data) and len(reads) == 3
