"""`ilex bids` on a small BIDS dataset made here (tests/bids_dataset.py: Colin27 through four known transforms at
3 mm; sub-01, sub-02 with two sessions, sub-03) and a local TemplateFlow home (MNI152 2009a, res-03 used).

Checked with the readers users have: pybids indexes every file written (`BIDSLayout(BIDS_DIR,
derivatives=OUTPUT_DIR)`) with its derivatives entities; antspyx's `ants.apply_transforms` reading each .h5 moves
the image as `ilex apply` reading it does; the registered images, one anatomy seen through known transforms, agree
with each other far better than the raw ones. Then: a second run skips everything, a run with other settings redoes
and says so, and bad datasets are refused with one line, exit status 1 and nothing written.
"""

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
from bids_dataset import IMAGES, TEMPLATE, bids_dataset, templateflow_home

from ilex import __version__
from ilex.cli.main import main

FAST = ["-m", "optimize", "-e", "64", "--levels", "2", "--iterations", "10", "-q", "--no-compilation-cache"]
TPL = ["--template", TEMPLATE, "--template-resolution", "3"]
PREFIXES = [f"sub-{s}" + (f"_ses-{t}" if t else "") for s, t in IMAGES]


@pytest.fixture(autouse=True)
def _templateflow(study, monkeypatch):
    """The test's TemplateFlow home, and no HTTP request (the client's way to the network) allowed."""
    import requests

    def refuse(self, method, url, *args, **kwargs):
        raise AssertionError(f"a download was tried: {url}")

    monkeypatch.setattr(requests.sessions.Session, "request", refuse)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", study["templateflow"])
    monkeypatch.setenv("TEMPLATEFLOW_AUTOUPDATE", "0")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("bids")
    dataset = bids_dataset(root)
    dataset["templateflow"] = templateflow_home(root / "templateflow")
    dataset["template"] = os.path.join(dataset["templateflow"], f"tpl-{TEMPLATE}", f"tpl-{TEMPLATE}_res-03_T1w.nii.gz")
    return dataset


@pytest.fixture(scope="module")
def participant(study):
    out = os.path.join(os.path.dirname(study["bids"]), "derivatives", "ilex")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("TEMPLATEFLOW_HOME", study["templateflow"])
        assert main(["bids", study["bids"], out, "participant", *TPL, *FAST]) == 0
    return out


def _expected(prefix: str) -> list[str]:
    sub, _, ses = prefix.partition("_")
    anat = os.path.join(sub, *([ses] if ses else []), "anat")
    qc = os.path.join(sub, "figures", f"{prefix}_space-{TEMPLATE}_desc-qc")
    return [
        os.path.join(anat, f"{prefix}_from-T1w_to-{TEMPLATE}_mode-image_xfm.h5"),
        os.path.join(anat, f"{prefix}_from-{TEMPLATE}_to-T1w_mode-image_xfm.h5"),
        os.path.join(anat, f"{prefix}_space-{TEMPLATE}_desc-preproc_T1w.nii.gz"),
        *[
            os.path.join(qc, name)
            for name in ("checkerboard.png", "jacobian.nii.gz", "qc.json", "report.html", "report.npz")
        ],
        os.path.join(qc, "jacobian.nii.gz.ilex-batch.json"),  # the batch's record of the settings
    ]


def _tree(root: str) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files}


pytestmark = pytest.mark.realdata


@pytest.mark.slow
def test_the_derivatives_tree_is_complete(participant):
    summary = [f"space-{TEMPLATE}_desc-ilex_summary.{ext}" for ext in ("csv", "json", "report.html")]
    expected = {f for p in PREFIXES for f in _expected(p)} | {"dataset_description.json", *summary}
    assert _tree(participant) == expected
    with open(os.path.join(participant, "dataset_description.json")) as f:
        description = json.load(f)
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "ilex" and description["GeneratedBy"][0]["Version"] == __version__
    settings = description["IlexSettings"]["participant"]
    assert settings["method"] == "optimize" and settings["extent"] == 64 and settings["space"] == TEMPLATE
    assert settings["options"] == {"levels": [2], "iterations": [10]}
    with open(os.path.join(participant, summary[1])) as f:
        assert json.load(f)["totals"] == {"done": 4, "skipped": 0, "failed": 0}


@pytest.mark.slow
def test_pybids_indexes_every_file_with_derivatives_entities(study, participant):
    from bids import BIDSLayout

    layout = BIDSLayout(study["bids"], derivatives=participant)
    (derivatives,) = layout.derivatives.values()
    indexed = {os.path.relpath(f.path, participant): f.get_entities() for f in derivatives.get(return_type="object")}
    assert set(indexed) == _tree(participant)
    for prefix in PREFIXES:
        sub, _, ses = prefix.partition("_")
        subject, session = sub[4:], ses[4:] or None
        forward, inverse, preproc, *qc = _expected(prefix)
        assert {k: v for k, v in indexed[forward].items() if k != "datatype"} == {
            "subject": subject,
            **({"session": session} if session else {}),
            "from": "T1w",
            "to": TEMPLATE,
            "mode": "image",
            "suffix": "xfm",
            "extension": ".h5",
        }
        assert (indexed[inverse]["from"], indexed[inverse]["to"]) == (TEMPLATE, "T1w")
        assert (indexed[preproc]["space"], indexed[preproc]["desc"], indexed[preproc]["suffix"]) == (
            TEMPLATE,
            "preproc",
            "T1w",
        )
        for file in qc:
            assert indexed[file]["subject"] == subject and indexed[file].get("session") == session
            assert (indexed[file]["space"], indexed[file]["desc"]) == (TEMPLATE, "qc")
    # The queries a pipeline runs: the transforms to the template, one per image.
    found = layout.get(scope="derivatives", suffix="xfm", to=TEMPLATE, extension=".h5", return_type="file")
    assert sorted(os.path.relpath(f, participant) for f in found) == sorted(_expected(p)[0] for p in PREFIXES)
    assert layout.get_sessions(scope="derivatives", subject="02") == ["1", "2"]


@pytest.mark.slow
def test_ants_and_ilex_apply_move_the_images_alike(study, participant, tmp_path):
    """For sub-01 and sub-02 ses-2, both directions: `ants.apply_transforms` reading the .h5 (the target's grid
    as reference) against `ilex apply` reading the same file, and the forward one against the preproc image."""
    import ants
    from scipy.ndimage import binary_erosion

    template = study["template"]
    for prefix in ("sub-01", "sub-02_ses-2"):
        image = study["images"][prefix]
        forward, inverse, preproc, *_ = (os.path.join(participant, f) for f in _expected(prefix))
        for transform, source, target in ((forward, image, template), (inverse, template, image)):
            theirs = ants.apply_transforms(ants.image_read(target), ants.image_read(source), [transform]).numpy()
            out = tmp_path / f"{prefix}_{os.path.basename(transform)}.nii.gz"
            assert main(["apply", transform, source, str(out), "-q"]) == 0
            ours = nib.load(out)
            assert ours.shape == nib.load(target).shape
            np.testing.assert_allclose(ours.affine, nib.load(target).affine, atol=1e-5)
            top = nib.load(source).get_fdata().max()
            # Inside the head, away from the fields of view's edges (ITK reads half a voxel further out).
            inside = binary_erosion(ours.get_fdata() > 0.1 * ours.get_fdata().max(), iterations=2)
            difference = np.abs(theirs - ours.get_fdata())[inside].max() / top
            print(f"{prefix} {os.path.basename(transform)}: ANTs vs ilex apply {difference:.2e} of the maximum")
            assert difference < 1e-5  # measured 1.6e-6 to 2.2e-6
            if transform == forward:
                moved = nib.load(preproc).get_fdata()
                own = np.abs(moved - ours.get_fdata()).max() / top
                print(f"{prefix}: preproc vs ilex apply of the forward .h5 {own:.2e} of the maximum")
                assert own < 1e-5  # measured 3.4e-6 and 4.1e-6


@pytest.mark.slow
def test_the_registered_images_agree_as_the_known_anatomy_says(study, participant):
    """Four views of one anatomy: after registration to one template their pairwise correlation (in the
    template's head) is far above that of the raw images on their common grid (measured below)."""
    template = nib.load(study["template"]).get_fdata()
    mask = template > 0.2 * template.max()
    moved = [nib.load(os.path.join(participant, _expected(p)[2])).get_fdata()[mask] for p in PREFIXES]
    raw = [nib.load(study["images"][p]).get_fdata().ravel() for p in PREFIXES]
    after = np.mean([np.corrcoef(a, b)[0, 1] for k, a in enumerate(moved) for b in moved[k + 1 :]])
    before = np.mean([np.corrcoef(a, b)[0, 1] for k, a in enumerate(raw) for b in raw[k + 1 :]])
    print(f"mean pairwise correlation: raw {before:.3f}, registered {after:.3f}")
    # measured: raw 0.679, registered 0.881 (each view has its own intensity curve and noise)
    assert after > 0.85 and after > before + 0.15


@pytest.mark.slow
def test_on_a_dask_worker_the_files_are_the_same(study, participant, tmp_path):
    """--local-workers 1 (ilex batch's Dask path) for sub-01 writes the bytes the local run wrote."""
    out = str(tmp_path / "dask")
    argv = ["bids", study["bids"], out, "participant", "--participant-label", "01", "--local-workers", "1"]
    assert main([*argv, *TPL, *FAST]) == 0
    for file in _expected("sub-01")[:3]:
        with open(os.path.join(out, file), "rb") as a, open(os.path.join(participant, file), "rb") as b:
            assert a.read() == b.read(), file


@pytest.mark.slow
def test_a_rerun_skips_and_other_settings_redo(study, participant, capsys):
    files = {f: os.stat(os.path.join(participant, f)).st_mtime_ns for f in _tree(participant)}
    verbose = [a for a in FAST if a != "-q"]
    assert main(["bids", study["bids"], participant, "participant", *TPL, *verbose]) == 0
    out = capsys.readouterr().out
    assert "0 done, 4 skipped, 0 failed" in out
    assert all(os.stat(os.path.join(participant, f)).st_mtime_ns == t for f, t in files.items() if "anat" in f)
    # Other settings for one participant: its images are redone, and the line says why; the others are untouched.
    other = [*verbose[:-3], "--iterations", "5", "--no-compilation-cache"]
    assert main(["bids", study["bids"], participant, "participant", "--participant-label", "sub-02", *TPL, *other]) == 0
    out = capsys.readouterr().out
    assert "2 done (2 redone" in out and "0 skipped" in out
    assert "sub-02_ses-1 redone: its outputs were made with other settings (options" in out
    for f, t in files.items():
        changed = os.stat(os.path.join(participant, f)).st_mtime_ns != t
        if f.startswith("sub-"):  # sub-02's files are rewritten, sub-01's and sub-03's left as they were
            assert changed == f.startswith("sub-02/"), f
    with open(os.path.join(participant, "dataset_description.json")) as f:
        assert json.load(f)["IlexSettings"]["participant"]["options"]["iterations"] == [5]


@pytest.mark.slow
def test_group_writes_a_templateflow_template(study, tmp_path, capsys):
    from bids import BIDSLayout

    out = str(tmp_path / "derivatives")
    two = ["--participant-label", "01", "03"]  # a template of two images: half the time of four
    argv = ["bids", study["bids"], out, "group", *two, "--template-label", "study", "--rounds", "1", *FAST[:4], "-q"]
    assert main(argv) == 0
    folder = os.path.join(out, "tpl-study")
    assert sorted(os.listdir(folder)) == [
        "template_description.json",
        "tpl-study_desc-qc_report.html",
        "tpl-study_res-1_T1w.nii.gz",
    ]
    with open(os.path.join(folder, "template_description.json")) as f:
        description = json.load(f)
    image = nib.load(os.path.join(folder, "tpl-study_res-1_T1w.nii.gz"))
    assert description["Identifier"] == "study" and description["Participants"] == ["sub-01", "sub-03"]
    assert description["res"]["1"]["shape"] == list(image.shape)
    layout = BIDSLayout(study["bids"], derivatives=out)
    (derivatives,) = layout.derivatives.values()
    # Every file written is indexed, but the build's work folder, which pybids leaves out by design (sourcedata/).
    indexed = {os.path.relpath(f.path, out) for f in derivatives.get(return_type="object")}
    assert indexed == {f for f in _tree(out) if not f.startswith("sourcedata" + os.sep)}
    (found,) = derivatives.get(suffix="T1w", res="1", extension=".nii.gz", return_type="file")
    assert found == os.path.join(folder, "tpl-study_res-1_T1w.nii.gz")
    with open(os.path.join(out, "dataset_description.json")) as f:
        assert json.load(f)["IlexSettings"]["group"]["template"] == "study"
    # A rerun with the same images and settings keeps it.
    assert main(argv[:-1]) == 0
    assert "made from these images with these settings (kept)" in capsys.readouterr().err
    # Another λ: made again, and said so.
    before = os.stat(os.path.join(folder, "tpl-study_res-1_T1w.nii.gz")).st_mtime_ns
    assert main([*argv[:-1], "-r", "0.7"]) == 0
    assert "was made from other images or with other settings: making it again" in capsys.readouterr().err
    assert os.stat(os.path.join(folder, "tpl-study_res-1_T1w.nii.gz")).st_mtime_ns != before
    with open(os.path.join(folder, "template_description.json")) as f:
        assert json.load(f)["IlexSettings"]["hyper"] == 0.7


def _one_line_refusal(capsys, argv, out, *expected):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ilex bids: error: ") and "\n" not in err, err
    for text in expected:
        assert text in err, err
    assert not os.path.exists(out), "a refused run wrote something"


def test_bad_datasets_are_refused_in_one_line_before_any_work(study, tmp_path, capsys):
    bids, out = study["bids"], str(tmp_path / "out")
    run = ["participant", *TPL, *FAST]
    bare = tmp_path / "bare"
    shutil.copytree(bids, bare)
    os.remove(bare / "dataset_description.json")
    _one_line_refusal(capsys, ["bids", str(bare), out, *run], out, "has no dataset_description.json")
    _one_line_refusal(
        capsys,
        ["bids", bids, out, *run, "--participant-label", "04"],
        out,
        "--participant-label 04: not in",
        "01, 02, 03",
    )
    _one_line_refusal(capsys, ["bids", bids, out, *run, "--session-label", "3"], out, "--session-label 3: not in")
    bad = tmp_path / "filter.json"
    bad.write_text("{not json")
    _one_line_refusal(capsys, ["bids", bids, out, *run, "--bids-filter-file", str(bad)], out, f"{bad}: not a JSON")
    bad.write_text('{"t1w": {"colour": "blue"}}')
    _one_line_refusal(
        capsys, ["bids", bids, out, *run, "--bids-filter-file", str(bad)], out, "unknown entities 'colour'"
    )
    bad.write_text('{"bold": {"task": "rest"}}')
    _one_line_refusal(capsys, ["bids", bids, out, *run, "--bids-filter-file", str(bad)], out, "no 't1w' key")
    bad.write_text('{"t1w": {"acquisition": "mprage"}}')
    _one_line_refusal(
        capsys, ["bids", bids, out, *run, "--bids-filter-file", str(bad)], out, "no image matches", "acquisition=mprage"
    )
    _one_line_refusal(
        capsys,
        ["bids", bids, out, "participant", "--template", "MNI152NLin6Asym", *FAST],
        out,
        "MNI152NLin6Asym: not a file, and not a TemplateFlow template",
        f"TEMPLATEFLOW_HOME={study['templateflow']}",
    )
    # The optimiser's options with a method that has no optimiser, and at the group level (its template's defaults).
    _one_line_refusal(
        capsys,
        ["bids", bids, out, "participant", *TPL, "-m", "deform", "--iterations", "5", "-q"],
        out,
        "--similarity, --levels and --iterations set the optimiser: use them with -m optimize",
    )
    _one_line_refusal(
        capsys,
        ["bids", bids, out, "group", "-m", "optimize", "--levels", "2", "-q"],
        out,
        "--similarity, --levels and --iterations: the group level's template runs with its defaults",
    )
    # A study template is deformable; the refusal names ilex template for a subject's linear template.
    _one_line_refusal(
        capsys,
        ["bids", bids, out, "group", "-m", "rigid", "-q"],
        out,
        "-m rigid: the group level builds a deformable study template",
        "ilex template SESSIONS -o DIR -m rigid",
    )
    # An OUTPUT_DIR inside the dataset (not named derivatives) holds T1w images: they are not inputs.
    inside = tmp_path / "inside"
    shutil.copytree(bids, inside)
    shutil.copytree(study["images"]["sub-01"].rsplit("/sub-01/", 1)[0] + "/sub-01", inside / "out" / "sub-01")
    from ilex.bids import find_images

    assert len(find_images(inside)) == 5  # the copy under out/ looks like a fifth image
    assert [i.prefix for i in find_images(inside, exclude=(str(inside / "out"),))] == PREFIXES
    # A filter that keeps images: sub-02's second session only.
    good = tmp_path / "good.json"
    good.write_text('{"t1w": {"session": "2"}}')
    from ilex.bids.dataset import read_filter_file

    (image,) = find_images(bids, filters=read_filter_file(good))
    assert (image.subject, image.session, image.prefix) == ("02", "2", "sub-02_ses-2")
    assert [i.prefix for i in find_images(bids, participant_label=["sub-02"], session_label=["1"])] == ["sub-02_ses-1"]
