"""TemplateFlow names as fixed images (`ilex.templateflow`), in a TemplateFlow home laid out by the test
(tests/bids_dataset.py) from the fetched MNI152 2009a: found through the `templateflow` client by its naming rules,
a name or resolution it does not have refused in one line that says where ilex looked, and never a download: every
test here fails if anything asks `requests` for a URL (the client's only way to the network, for S3; DataLad is off).
"""

from __future__ import annotations

import csv
import os

import nibabel as nib
import pytest
from bids_dataset import TEMPLATE, templateflow_home
from data import data_path

from ilex.cli.main import main
from ilex.errors import FileProblem, OptionError
from ilex.templateflow import resolve_image, resolve_template, templateflow_name

pytestmark = pytest.mark.realdata


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Any HTTP request fails the test (and is recorded, for the test that expects one to be tried)."""
    import requests

    tried = []

    def refuse(self, method, url, *args, **kwargs):
        tried.append(url)
        raise requests.exceptions.ConnectionError(f"test: no network ({url})")

    monkeypatch.setattr(requests.sessions.Session, "request", refuse)
    monkeypatch.setenv("TEMPLATEFLOW_AUTOUPDATE", "0")
    monkeypatch.setenv("TEMPLATEFLOW_USE_DATALAD", "0")
    return tried


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return templateflow_home(tmp_path_factory.mktemp("templateflow"))


@pytest.fixture
def tf(home, monkeypatch, no_download):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", home)
    yield home
    assert no_download == [], f"a download was tried: {no_download}"


def test_names_and_files_are_told_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert templateflow_name("MNI152NLin2009cAsym") == "MNI152NLin2009cAsym"
    assert templateflow_name("tpl-MNI152NLin6Asym") == "MNI152NLin6Asym"
    for path in ("mni.nii.gz", "./MNI", "a/b", "MNI_152"):
        assert templateflow_name(path) is None
    (tmp_path / "MNI").write_bytes(b"")  # an existing file is a file, whatever its name
    assert templateflow_name("MNI") is None


def test_a_name_is_found_by_the_clients_naming_rules(tf):
    folder = os.path.join(tf, f"tpl-{TEMPLATE}")
    one = os.path.join(folder, f"tpl-{TEMPLATE}_res-01_T1w.nii.gz")
    three = os.path.join(folder, f"tpl-{TEMPLATE}_res-03_T1w.nii.gz")
    assert resolve_template(TEMPLATE) == one  # default: resolution 1
    assert resolve_template(TEMPLATE, 1) == one
    assert resolve_template(TEMPLATE, 3) == three  # res-03 is 3, and the desc-brain image beside it is not taken
    assert resolve_image(f"tpl-{TEMPLATE}", 3) == three
    assert resolve_image(data_path("colin27_t1.nii.gz")) == data_path("colin27_t1.nii.gz")


def test_unknown_names_and_resolutions_say_where_ilex_looked(tf):
    with pytest.raises(OptionError) as e:
        resolve_template("MNI152NLin2009cAsym")
    message = str(e.value)
    assert f"TEMPLATEFLOW_HOME={tf}" in message and f"(there: {TEMPLATE})" in message and "\n" not in message
    with pytest.raises(OptionError, match=r"no T1w image at resolution 2 \(res-02\) .* has resolutions 1, 3\)"):
        resolve_template(TEMPLATE, 2)


def test_an_empty_or_missing_home_is_an_error_and_left_as_it_is(tmp_path, monkeypatch):
    for home in (tmp_path / "missing", tmp_path / "empty"):
        if home.name == "empty":
            home.mkdir()
        monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
        with pytest.raises(OptionError, match=f"TEMPLATEFLOW_HOME={home} holds no TemplateFlow templates"):
            resolve_template("MNI152NLin2009cAsym")
        assert (not home.exists()) if home.name == "missing" else os.listdir(home) == []


def test_a_placeholder_is_fetched_by_the_client_and_offline_that_is_one_line(tmp_path, monkeypatch, no_download):
    """The client's skeleton keeps zero-byte files: for one of those the client downloads (here refused)."""
    home = tmp_path / "tf"
    folder = home / "tpl-Empty"
    folder.mkdir(parents=True)
    (home / "dataset_description.json").write_text('{"Name": "TemplateFlow", "BIDSVersion": "1.1.0"}')
    (folder / "template_description.json").write_text('{"Identifier": "Empty"}')
    (folder / "tpl-Empty_res-01_T1w.nii.gz").write_bytes(b"")
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    with pytest.raises(FileProblem) as e:
        resolve_template("Empty")
    assert str(e.value).startswith(str(folder / "tpl-Empty_res-01_T1w.nii.gz"))
    assert "fetching it failed" in str(e.value) and "\n" not in str(e.value)
    assert no_download == ["https://templateflow.s3.amazonaws.com/tpl-Empty/tpl-Empty_res-01_T1w.nii.gz"]


def test_register_refuses_an_unknown_name_in_one_line(tf, tmp_path, capsys):
    out = tmp_path / "out" / "moved.nii.gz"
    moving = data_path("colin27_t1.nii.gz")
    assert main(["register", "-m", "optimize", moving, "MNI152NLin6Asym", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ilex register: error: MNI152NLin6Asym: not a file, and not a TemplateFlow template")
    assert f"TEMPLATEFLOW_HOME={tf}" in err and "\n" not in err
    assert main(["register", "-m", "optimize", moving, data_path("mni2009a_t1.nii.gz"), "-o", str(out),
                 "--template-resolution", "2"]) == 1  # fmt: skip
    assert "--template-resolution: " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_template_takes_a_name_as_its_initial_template(tf, tmp_path, monkeypatch, capsys):
    """`ilex template --initial NAME [--template-resolution N]` builds from the file the name gives; an unknown
    name, or a resolution for a file, is refused in one line before anything is written."""
    import ilex.template

    images = []
    for k in range(2):
        images.append(str(tmp_path / f"sub{k}.nii.gz"))
        nib.save(nib.load(data_path("colin27_t1.nii.gz")), images[-1])
    given = {}

    def build(*args, **kwargs):  # the build itself is test_template.py's; here, what it was given
        given.update(kwargs)
        raise OptionError("stopped by the test")

    monkeypatch.setattr(ilex.template, "build_template", build)
    out = str(tmp_path / "out")
    argv = ["template", *images, "-o", out, "-m", "optimize", "-q"]
    assert main([*argv, "--initial", TEMPLATE, "--template-resolution", "3"]) == 1
    assert given["initial"] == os.path.join(tf, f"tpl-{TEMPLATE}", f"tpl-{TEMPLATE}_res-03_T1w.nii.gz")
    assert "stopped by the test" in capsys.readouterr().err
    given.clear()
    assert main([*argv, "--initial", "MNI152NLin6Asym"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ilex template: error: MNI152NLin6Asym: not a file, and not a TemplateFlow template")
    assert "\n" not in err
    assert main([*argv, "--initial", images[0], "--template-resolution", "2"]) == 1
    assert "--template-resolution: it is for --initial given by a TemplateFlow name" in capsys.readouterr().err
    assert given == {}
    assert not os.path.exists(out)


@pytest.mark.slow
def test_register_and_batch_take_a_name_as_the_file(tf, tmp_path):
    """`ilex register MOVING NAME` and a batch row whose fixed cell is NAME give the bytes the file gives."""
    moving = data_path("colin27_t1.nii.gz")
    small = tmp_path / "colin.nii.gz"  # Colin27 at 3 mm: the registration takes seconds
    image = nib.load(moving)
    nib.save(nib.Nifti1Image(image.get_fdata()[::3, ::3, ::3].astype("float32"), image.affine @ _scale(3)), small)
    fast = ["-m", "optimize", "-e", "64", "--levels", "2", "--iterations", "5", "-q"]
    file = os.path.join(tf, f"tpl-{TEMPLATE}", f"tpl-{TEMPLATE}_res-03_T1w.nii.gz")
    assert main(["register", str(small), file, "-o", str(tmp_path / "by_file.nii.gz"), *fast]) == 0
    by_name = ["register", str(small), TEMPLATE, "--template-resolution", "3", "-o", str(tmp_path / "by_name.nii.gz")]
    assert main([*by_name, *fast]) == 0
    expected = (tmp_path / "by_file.nii.gz").read_bytes()
    assert (tmp_path / "by_name.nii.gz").read_bytes() == expected
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [["moving", "fixed", "o"], [str(small), TEMPLATE, "batch.nii.gz"], [str(small), "NoSuchTpl", "x.nii.gz"]]
        )
    argv = ["batch", str(tmp_path / "pairs.csv"), "--template-resolution", "3", *fast[:-1]]
    assert main([*argv, "--summary", str(tmp_path / "summary")]) == 1  # the unknown name fails its row alone
    assert (tmp_path / "batch.nii.gz").read_bytes() == expected
    assert not (tmp_path / "x.nii.gz").exists()
    with open(tmp_path / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["done", "failed"]
    assert "NoSuchTpl: not a file, and not a TemplateFlow template" in rows[1]["error"]


def _scale(k: float):
    import numpy as np

    return np.diag([k, k, k, 1.0])
