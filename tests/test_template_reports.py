"""`ilex template`'s study page and its NaN warning (issue 35), on tiny synthetic heads with the
seam's `seam_methods.ConstantFlow` (a constant warp, no weights: seconds per build)."""

import json
import os
import pathlib
import re

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

import ilex
from ilex.cli.main import main
from ilex.errors import IlexWarning

WARP = "seam_methods.ConstantFlow"
STILL = "seam_methods.ZeroFlow"  # the identity warp: the flagged-image tests' good heads are in place


def _head(path, shift, seed, background=0.0):
    # A smooth blob with some texture, 2 mm voxels, its centre `shift` mm off the grid's; outside
    # the head `background` (NaN: as SPM writes it).
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(20.0)] * 3, indexing="ij"), -1) * 2.0 - 19.0 - np.asarray(shift)
    blob = np.exp(-(grid**2).sum(-1) / (2 * 5.0**2))
    data = np.where(blob > 1e-3, blob * (100 + gaussian_filter(rng.normal(size=(20,) * 3), 2) * 10), background)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -19.0
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
    return str(path)


def _images_linked(page: str) -> set[str]:
    return set(re.findall(r'href="([^"]+)/report\.html"', page))


@pytest.mark.slow
def test_ilex_template_writes_its_study_page_and_ilex_report_redraws_it(tmp_path, capsys):
    images = [_head(tmp_path / f"h{k}.nii.gz", shift, k) for k, shift in enumerate([(0, 0, 0), (4, -2, 2), (-2, 2, 0)])]
    out = tmp_path / "template"
    assert main(["template", *images, "-o", str(out), "-m", WARP, "-e", "32", "--rounds", "2", "-q"]) == 0
    page_path = out / "qc" / "summary.report.html"
    assert page_path.is_file(), sorted(os.listdir(out / "qc"))
    page = page_path.read_text(encoding="utf-8")
    # Every image's own page is linked (relative to the study page), and each exists.
    assert _images_linked(page) == {"h0", "h1", "h2"}
    for k in range(3):
        assert (out / "qc" / f"h{k}" / "report.html").is_file()
    # The convergence of rounds.csv: rounds 0, 1 and 2, and the cluster's state (here, this machine) per round.
    assert 'id="convergence"' in page
    assert 'id="cluster"' in page
    import csv

    with open(out / "rounds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        seconds, serial, share = float(row["seconds"]), float(row["serial_seconds"]), float(row["serial_share"])
        assert row["workers"] == "1" and 0 <= serial <= seconds and share == pytest.approx(serial / seconds, abs=1e-5)
        assert float(row["busy_seconds_max"]) + float(row["waiting_seconds_mean"]) <= seconds + 0.01  # ms times
        assert float(row["memory_registration_gib"]) > float(row["memory_share_gib"]) > 0
        assert float(row["disk_round_gib"]) > 0
    # `ilex report` draws the same page again from the files the build left.
    again = tmp_path / "again.html"
    assert main(["report", str(out / "qc" / "summary.csv"), "--rounds", str(out / "rounds.csv"), "-o", str(again)]) == 0
    redrawn = again.read_text(encoding="utf-8")
    assert 'id="convergence"' in redrawn
    # The links are relative to the page: from tmp_path they go through template/qc/.
    assert _images_linked(redrawn) == {f"template/qc/h{k}" for k in range(3)}


@pytest.mark.slow
def test_a_nan_image_is_warned_about_once_over_the_whole_build(tmp_path, recwarn):
    images = [
        _head(tmp_path / "h0.nii.gz", (0, 0, 0), 0),
        _head(tmp_path / "nan.nii.gz", (4, -2, 2), 1, background=np.nan),
        _head(tmp_path / "h2.nii.gz", (-2, 2, 0), 2),
    ]
    result = ilex.build_template(images, tmp_path / "template", method=WARP, extent=32, rounds=2)
    assert len(result.rounds) == 3 and all(row["averaged"] == 3 for row in result.rounds)
    nan_warnings = [w for w in recwarn.list if issubclass(w.category, IlexWarning) and "NaN" in str(w.message)]
    assert len(nan_warnings) == 1, [str(w.message) for w in nan_warnings]
    assert str(nan_warnings[0].message).startswith(f"{images[1]}: ")
    assert "taken as background" in str(nan_warnings[0].message)


def _flipped(path, source):
    # `source` with its header's front-back axis negated (the voxels as they were): the head is
    # mirrored and, the origin being at a corner of the grid, put 38 mm behind the others, apart from them.
    img = nib.load(source)
    affine = img.affine.copy()
    affine[:, 1] *= -1
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), path)
    return str(path)


def _rounds(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    work = tmp_path_factory.mktemp("cohort")
    # Good heads in place (ZeroFlow leaves them there, so that their registrations pass the rules),
    # each with its own texture; the flipped one apart from them.
    good = [_head(work / f"h{k}.nii.gz", (0, 0, 0), k) for k in range(3)]
    return good, _flipped(work / "flip.nii.gz", _head(work / "source.nii.gz", (0, 0, 0), 3))


@pytest.mark.slow
def test_template_names_the_flipped_image_each_round_and_keeps_it_by_default(cohort, tmp_path, capsys):
    good, flipped = cohort
    out = tmp_path / "template"
    assert main(["template", *good, flipped, "-o", str(out), "-m", STILL, "-e", "32", "--rounds", "2"]) == 0
    err = capsys.readouterr().err
    rows = _rounds(out / "rounds.csv")
    # Round 0 (the affine average) flags the flipped image alone: its headers put it apart. Kept, it
    # pulls the template a quarter of its 40 mm offset away, and in rounds 1 and 2 the good heads,
    # which ZeroFlow leaves in place, no longer overlap the template either: flagged too.
    assert [row["flagged"] for row in rows] == ["flip", "h0 h1 h2 flip", "h0 h1 h2 flip"]
    assert [row["averaged"] for row in rows] == ["4"] * 3  # kept by default
    named = [line for line in err.splitlines() if "is flagged by the rules" in line]
    flip_lines = [line for line in named if line.startswith("ilex template: round") and " flip (" in line]
    assert len(flip_lines) == 3 and all("kept in the average" in line for line in flip_lines), err
    # Its headers put it apart: that rule says so, whatever else fails.
    assert all("overlap_before" in line for line in flip_lines)
    assert "1 flagged (flip)" in err and "4 flagged (h0 h1 h2 flip)" in err
    # The study page lists it at the top, among the images the rules flag, with its reasons.
    page = (out / "qc" / "summary.report.html").read_text(encoding="utf-8")
    start = page.index('id="flagged"')
    flagged_table = page[start : page.index("</table>", start)]
    assert 'data-pair="flip"' in flagged_table and "the headers put the heads apart" in flagged_table
    assert start < page.index('id="pairs"')
    assert "4 flagged by the per-pair rules" in page


@pytest.mark.slow
def test_exclude_flagged_builds_the_template_of_the_good_images(cohort, tmp_path):
    """With --exclude-flagged the flipped image is left out of every average: the template is the
    one the three good images make alone (same round-0 reference, same sums in the same order)."""
    good, flipped = cohort
    with_flag = tmp_path / "excluded"
    argv = ["-m", STILL, "-e", "32", "--rounds", "2", "-q"]
    assert main(["template", *good, flipped, "-o", str(with_flag), *argv, "--exclude-flagged"]) == 0
    alone = tmp_path / "alone"
    assert main(["template", *good, "-o", str(alone), *argv]) == 0
    rows = _rounds(with_flag / "rounds.csv")
    assert [row["flagged"] for row in rows] == ["flip"] * 3 and [row["averaged"] for row in rows] == ["3"] * 3
    excluded = np.asarray(nib.load(with_flag / "template.nii.gz").dataobj)
    reference = np.asarray(nib.load(alone / "template.nii.gz").dataobj)
    np.testing.assert_array_equal(excluded, reference)  # measured: the same bits
    # The flipped image still has its outputs and its page: only the average leaves it out.
    assert (with_flag / "qc" / "flip" / "report.html").is_file()


def test_report_reads_rounds_csv_with_and_without_the_flagged_column(tmp_path):
    from ilex.qc.study_report import read_rounds

    old = tmp_path / "old.csv"  # as ilex wrote it before the column
    old.write_text(
        "round,mean_displacement_mm,max_displacement_mm,mean_similarity,template_change,averaged,failed,seconds,"
        "reduce_seconds,peak_memory_gib\n0,13.9,21.4,1.12,,3,,4.2,,1.3\n1,2.5,4.0,1.2,0.04,3,,3.0,0.3,1.3\n"
    )
    new = tmp_path / "new.csv"
    new.write_text(
        "round,mean_displacement_mm,max_displacement_mm,mean_similarity,template_change,averaged,failed,flagged,"
        "seconds,reduce_seconds,peak_memory_gib\n0,13.9,21.4,1.12,,3,,flip,4.2,,1.3\n"
        "1,2.5,4.0,1.2,0.04,3,,flip other,3.0,0.3,1.3\n"
    )
    for path in (old, new):
        table = read_rounds(path)
        assert table["round"] == [0.0, 1.0] and table["template_change"] == [None, 0.04]


def test_report_shows_the_cluster_state_when_rounds_csv_has_it(tmp_path):
    from ilex.qc.study_report import read_rounds, write_study_report

    head = "round,mean_displacement_mm,max_displacement_mm,mean_similarity,template_change"
    old = tmp_path / "old.csv"
    old.write_text(f"{head}\n0,13.9,21.4,1.12,\n1,2.5,4.0,1.2,0.04\n")
    new = tmp_path / "new.csv"
    new.write_text(
        f"{head},seconds,workers,busy_seconds_mean,busy_seconds_max,waiting_seconds_mean,serial_seconds,serial_share\n"
        "0,13.9,21.4,1.12,,10.0,2,4.0,4.5,5.0,1.0,0.1\n1,2.5,4.0,1.2,0.04,20.0,2,17.0,18.0,1.5,1.5,0.075\n"
    )
    assert "serial_share" not in read_rounds(old)
    assert read_rounds(new)["serial_share"] == [0.1, 0.075]
    pages = {}
    for path in (old, new):
        pages[path.stem] = pathlib.Path(write_study_report([], tmp_path / f"{path.stem}.html", rounds=path)).read_text()
    assert 'id="convergence"' in pages["old"] and 'id="cluster"' not in pages["old"]
    assert "<td>7.5</td>" in pages["new"] and "serial share (%)" in pages["new"]


@pytest.mark.slow
def test_template_writes_itk_h5_transforms_that_ilex_apply_and_antspyx_read(tmp_path):
    """--warp-format h5: each image's warp.h5 and inverse.h5 move images as the NIfTI warps of the
    same build do, read by `ilex apply` and by antspyx (`ants.apply_transforms`, and
    `apply_transforms_to_points` for the forward map). `-m optimize` on three small heads, 1 round."""
    ants = pytest.importorskip("ants")
    import pandas as pd

    images = [_head(tmp_path / f"h{k}.nii.gz", shift, k) for k, shift in enumerate([(0, 0, 0), (4, -2, 2), (-2, 2, 0)])]
    args = ["-m", "optimize", "-e", "32", "--rounds", "1", "-q"]
    assert main(["template", *images, "-o", str(tmp_path / "nii"), *args]) == 0
    assert main(["template", *images, "-o", str(tmp_path / "h5"), *args, "--warp-format", "h5"]) == 0
    template = str(tmp_path / "h5" / "template.nii.gz")
    assert np.array_equal(nib.load(template).get_fdata(), nib.load(tmp_path / "nii" / "template.nii.gz").get_fdata())
    flip = np.array([-1.0, -1.0, 1.0])
    for k, image in enumerate(images):
        h5, nii = tmp_path / "h5" / "images" / f"h{k}", tmp_path / "nii" / "images" / f"h{k}"
        assert sorted(os.listdir(h5)) == ["affine.txt", "inverse.h5", "moved.nii.gz", "warp.h5"]
        for name, source, target in (("warp", image, template), ("inverse", template, image)):
            ours = {}
            for kind, directory in (("h5", h5), ("nii", nii)):
                out = tmp_path / f"{name}{k}_{kind}.nii.gz"
                suffix = ".h5" if kind == "h5" else ".nii.gz"
                assert main(["apply", str(directory / (name + suffix)), source, str(out)]) == 0
                ours[kind] = nib.load(out).get_fdata()
            top = np.abs(ours["nii"]).max()
            theirs = ants.apply_transforms(
                ants.image_read(target), ants.image_read(source), [str(h5 / f"{name}.h5")]
            ).numpy()
            # ilex reading its h5 against its NIfTI warp (the same field, split into an affine and a
            # rest): measured 0; antspyx resampling (linear, as ilex) away from the grid's edge:
            # measured up to 2.4e-7 of the image maximum (warps up to 3.4 mm).
            inside = np.zeros(ours["nii"].shape, bool)
            inside[2:-2, 2:-2, 2:-2] = True
            assert np.abs(ours["h5"] - ours["nii"]).max() <= 1e-6 * top, name
            assert np.abs(theirs - ours["nii"])[inside].max() < 2e-6 * top, name
        # Points of the template go where the NIfTI forward warp sends them (antspyx: LPS); measured 3.8e-6 mm.
        from ilex.image.warp_io import load_warp

        warp = load_warp(nii / "warp.nii.gz")
        field = warp.displacement
        vox = np.argwhere(np.ones(field.shape[:3], bool))[::97]
        world = vox @ warp.affine[:3, :3].T + warp.affine[:3, 3]
        frame = pd.DataFrame(world * flip, columns=["x", "y", "z"])
        moved = ants.apply_transforms_to_points(3, frame, [str(h5 / "warp.h5")]).to_numpy() * flip
        np.testing.assert_allclose(moved, world + field[tuple(vox.T)], atol=4e-5)


@pytest.mark.slow
def test_intermediate_rounds_write_the_figures_alone_unless_qc_every_round(cohort, tmp_path, capsys):
    """An intermediate round judges its registrations by qc.json alone (no pictures, no page): the
    same figures and verdict as the qc.json --qc-every-round writes beside its page (the template
    each registered to has another path), so the flags are the same; the last round's pages and
    the study page are the same either way."""
    good, flipped = cohort
    argv = [*good, flipped, "-m", STILL, "-e", "32", "--rounds", "2", "--keep-rounds", "-q"]
    lean, every = tmp_path / "lean", tmp_path / "every"
    assert main(["template", *argv, "-o", str(lean)]) == 0
    assert main(["template", *argv, "-o", str(every), "--qc-every-round"]) == 0
    assert [r["flagged"] for r in _rounds(lean / "rounds.csv")] == [r["flagged"] for r in _rounds(every / "rounds.csv")]
    for k, ids in ((0, ["h1", "h2", "flip"]), (1, ["h0", "h1", "h2", "flip"])):  # round 0: h0 is the reference
        for name in ids:
            figures = lean / f"round{k}" / "qc" / name
            assert os.listdir(figures) == ["qc.json"], k
            pages = every / "qc" / f"round-{k}" / name
            assert (pages / "report.html").is_file() and (pages / "checkerboard.png").is_file()
            lean_record, every_record = (json.loads((d / "qc.json").read_text()) for d in (figures, pages))
            fixed = lean_record.pop("fixed"), every_record.pop("fixed")
            assert fixed[0] == (good[0] if k == 0 else str(lean / "template_round0.nii.gz")), fixed
            assert lean_record == every_record  # every figure and the verdict
        assert not (lean / "qc" / f"round-{k}").exists()
    for out in (lean, every):  # the last round's: pages as before, and the study page links them
        assert all((out / "qc" / name / "report.html").is_file() for name in ["h0", "h1", "h2", "flip"])
        page = (out / "qc" / "summary.report.html").read_text(encoding="utf-8")
        assert _images_linked(page) == {"h0", "h1", "h2", "flip"}
