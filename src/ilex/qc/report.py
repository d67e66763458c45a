"""The QC report of one registration: what `ilex register --qc DIR` writes.

DIR/jacobian.nii.gz  Jacobian determinant of the forward warp on the fixed grid (1 = volume kept)
DIR/checkerboard.png fixed and moved images, three orthogonal slices, as a checkerboard
DIR/qc.json          folding fraction, Jacobian statistics, similarity before/after, the heads'
                     overlap and the affine's parts (`metrics.py`), for pipelines to threshold on,
                     and the verdict: every rule with its value, threshold and outcome (`verdict.py`)
DIR/report.html      the page a person reads (`html_report.py`), drawn from qc.json and
DIR/report.npz       the slices it shows and the run's times (`slices.py`)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from .._atomic import atomic_file
from ..image.io import save_image
from ..transforms.jacobian import folding_fraction, jacobian_determinant
from .checkerboard import checkerboard_png
from .html_report import write_pair_report
from .metrics import pair_metrics
from .slices import cut_slices
from .verdict import verdict

QC_FILES = ("jacobian.nii.gz", "checkerboard.png", "qc.json", "report.npz", "report.html")
QC_FIGURES = ("qc.json",)  # write_qc(pages=False): the figures and verdict alone (ilex template's intermediate rounds)


@dataclass(frozen=True)
class QualityReport:
    jacobian: np.ndarray  # (x, y, z) on the fixed grid
    folding_fraction: float  # fraction of fixed voxels with det J ≤ 0

    def summary(self) -> str:
        return f"folding {100 * self.folding_fraction:.4f} % of voxels (det J ≤ 0)"

    def statistics(self) -> dict[str, float]:
        det = self.jacobian
        return {
            "folding_fraction": self.folding_fraction,
            "folding_voxels": int(np.count_nonzero(det <= 0)),
            "jacobian_min": float(det.min()),
            "jacobian_max": float(det.max()),
            "jacobian_mean": float(det.mean()),
            "jacobian_p01": float(np.percentile(det, 1)),
            "jacobian_p99": float(np.percentile(det, 99)),
        }


def quality_report(result) -> QualityReport:
    """Jacobian determinant and folding fraction of `result.forward` (a `Registration`)."""
    det = np.asarray(jacobian_determinant(result.forward, result.fixed.affine))
    return QualityReport(det, float(folding_fraction(det)))


def write_qc(
    directory: str | os.PathLike,
    result,
    report: QualityReport,
    settings: dict | None = None,
    moved: np.ndarray | None = None,
    pages: bool = True,
) -> list[str]:
    """Write the QC files (see module docstring) into `directory`, created if needed; returns their paths.

    `moved` is `result.moved()`'s voxels when the caller already has them. Without `pages`, only
    qc.json (`QC_FIGURES`: the same figures and verdict, no pictures or page).
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, name) for name in (QC_FILES if pages else QC_FIGURES)]
    moved = np.asarray(result.moved().dataobj) if moved is None else moved  # the voxels
    if pages:
        save_image(paths[0], report.jacobian, result.fixed.affine)
        with atomic_file(paths[1], suffix=".png") as tmp, open(tmp, "wb") as f:
            f.write(checkerboard_png(result.fixed.data, moved, result.fixed.affine))
    from .. import __version__

    # What made the result, then what the method found (e.g. the similarity -m optimize chose;
    # its stage times are left out, so that a rerun writes the same file).
    found = {k: v for k, v in getattr(result.transform, "details", {}).items() if k != "profile"}
    record = {
        "moving": result.moving.path,
        "fixed": result.fixed.path,
        "ilex_version": __version__,
        **(settings or {}),
        **found,
        **({"masks": {k: m.path for k, m in result.masks.items()}} if getattr(result, "masks", None) else {}),
        **report.statistics(),
        **pair_metrics(result, report.jacobian, moved),
    }
    record["verdict"] = verdict(record)
    with atomic_file(os.path.join(directory, "qc.json"), suffix=".json") as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    if pages:
        write_pair_report(directory, record, report_slices(result, report, moved))
    return paths


def measured_mask(result) -> np.ndarray | None:
    """Where the similarity was measured, on the fixed grid (bool): the fixed mask, and the moving
    mask brought through the forward warp; None for a registration without masks."""
    masks = getattr(result, "masks", None)
    if not masks:
        return None
    import jax.numpy as jnp

    from ..registration.masks import mask_on_grid
    from ..registration.pipeline import resample

    eye = np.eye(4)
    out = np.ones(result.fixed.shape, bool)
    if "fixed" in masks:
        out &= mask_on_grid(masks["fixed"], eye, result.fixed, result.fixed.shape) > 0
    if "moving" in masks:
        on_moving = mask_on_grid(masks["moving"], eye, result.moving, result.moving.shape)
        disp = jnp.asarray(result.forward_vox)
        out &= np.asarray(resample(jnp.asarray(on_moving), disp, "nearest", jnp.float32(0))) > 0
    return out


def report_slices(result, report: QualityReport, moved: np.ndarray):
    """The slices report.html shows, with the run's time and memory per stage so far."""
    slices = cut_slices(result.fixed.data, moved, report.jacobian, result.fixed.affine, mask=measured_mask(result))
    slices.info = {"times": dict(result.times), "memory_gib": dict(getattr(result, "memory", {}))}
    return slices
