"""`ilex register -m optimize` and `--refine` through the command line (small and quick: extent 64)."""

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import fixture_path
from data import data_path

from ilex.cli.main import main

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_optimize_writes_what_register_writes(tmp_path):
    argv = [
        "register",
        "-m",
        "opt",
        data_path("colin27_t1.nii.gz"),
        data_path("mni2009a_t1.nii.gz"),
        "-e",
        "64",
        "--levels",
        "4",
        "--iterations",
        "5",
        "-o",
        tmp_path / "moved.nii.gz",
        "-t",
        tmp_path / "fw.nii.gz",
        "-T",
        tmp_path / "bw.mgz",
        "--qc",
        tmp_path / "qc",
        "-q",
    ]
    assert main([str(a) for a in argv]) == 0
    fw = nib.load(tmp_path / "fw.nii.gz")
    assert fw.shape == (*nib.load(data_path("mni2009a_t1.nii.gz")).shape, 1, 3) and np.isfinite(fw.get_fdata()).all()
    record = json.loads((tmp_path / "qc" / "qc.json").read_text())
    assert record["model"] == "optimize" and record["folding_fraction"] == 0.0


def test_refine_a_network_result(tmp_path):
    argv = [
        "register",
        "-m",
        "deform",
        "--refine",
        data_path("colin27_t1.nii.gz"),
        data_path("mni2009a_t1.nii.gz"),
        "-w",
        fixture_path("net_e64_mixed.h5"),
        "-e",
        "64",
        "--iterations",
        "3",
        "--qc",
        tmp_path / "qc",
        "-q",
    ]
    assert main([str(a) for a in argv]) == 0
    assert json.loads((tmp_path / "qc" / "qc.json").read_text())["model"] == "deform+refine"
