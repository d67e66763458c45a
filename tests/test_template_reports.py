"""`ilex template`'s study page and its NaN warning (issue 35), on tiny synthetic heads with the
seam's `seam_methods.ConstantFlow` (a constant warp, no weights: seconds per build)."""

import os
import re

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

import ilex
from ilex.cli.main import main
from ilex.errors import IlexWarning

WARP = "seam_methods.ConstantFlow"


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
    # The convergence of rounds.csv: rounds 0, 1 and 2.
    assert 'id="convergence"' in page
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
