"""`RUN_DIR/train.report.html`: the loss curves, validation Dice at each checkpoint and one pair before and after."""

from __future__ import annotations

import csv
import os

import numpy as np

from .._atomic import atomic_file
from ..qc._html import data_uri, escape, number, page, rows
from .settings import TrainSettings
from .validation import Validator

__all__ = ["read_log", "write_training_page"]


def read_log(run_dir: str) -> dict[str, np.ndarray]:
    """`log.csv` as columns of floats."""
    with open(os.path.join(run_dir, "log.csv"), newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in table]) for k in (table[0] if table else {})}


def _smooth(y: np.ndarray, n: int) -> np.ndarray:
    if len(y) < n or n < 2:
        return y
    return np.convolve(y, np.ones(n) / n, mode="valid")


def _curves(log: dict[str, np.ndarray], validation: list[dict]) -> bytes:
    from ..qc.figures import _figure, _png

    fig = _figure(900, 280, facecolor="white")
    window = max(1, len(log.get("step", [])) // 50)
    for k, (title, columns) in enumerate(
        (("loss", ("loss",)), ("terms", ("data", "smoothness")), ("validation Dice", ()))
    ):
        ax = fig.add_axes((0.06 + k * 0.33, 0.17, 0.26, 0.7))
        for column in columns:
            y = _smooth(log[column], window)
            ax.plot(log["step"][len(log["step"]) - len(y) :], y, linewidth=1.1, label=column)
        if not columns:
            for kind in ("synthetic", "real"):
                pts = [(r["step"], r["dice_after"]) for r in validation if r["kind"] == kind]
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", markersize=3, label=kind)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if columns and columns[0] == "loss" or title == "terms":
            ax.set_yscale("log")
        ax.legend(fontsize=7, frameon=False)
    return _png(fig, "P")


def _pair_slices(pair: dict) -> bytes:
    from ..qc.figures import _figure, _png

    fig = _figure(900, 200, facecolor="black")
    mid = pair["target"].shape[2] // 2
    panels = (
        ("source", pair["source"][:, :, mid], "gray"),
        ("target", pair["target"][:, :, mid], "gray"),
        ("source labels", pair["source_labels"][:, :, mid], "tab20"),
        ("moved labels", pair["moved_labels"][:, :, mid], "tab20"),
        ("target labels", pair["target_labels"][:, :, mid], "tab20"),
    )
    for k, (title, image, cmap) in enumerate(panels):
        ax = fig.add_axes((k / 5 + 0.005, 0.02, 0.19, 0.85))
        ax.imshow(np.rot90(image), cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=9, color="white")
        ax.axis("off")
    return _png(fig, "RGB")


def write_training_page(run_dir: str, settings: TrainSettings, validator: Validator) -> str:
    """Write the run's page (self-contained, as the registration reports) and return its path."""
    log = read_log(run_dir)
    path = os.path.join(run_dir, "train.report.html")
    table = "".join(
        f"<tr><td>{r['step']}</td><td>{escape(r['kind'])}</td><td>{r['pairs']}</td>"
        f"<td>{number(r['dice_before'])}</td><td>{number(r['dice_after'])}</td><td>{number(r['folding_percent'])}</td></tr>"
        for r in validator.rows
    )
    seconds = log.get("seconds", np.array([]))
    summary = rows(
        [
            ("steps", str(len(log.get("step", [])))),
            ("data", escape(settings.labels or "noise shapes")),
            ("extent, widths", escape(f"{settings.extent}, {list(settings.widths or (64,))}")),
            ("batch, seed", escape(f"{settings.batch_size}, {settings.seed}")),
            ("median step", f"{number(float(np.median(seconds[1:])) if len(seconds) > 1 else None)} s"),
            ("last loss", number(float(log["loss"][-1]) if len(seconds) else None)),
        ]
    )
    body = (
        f"<h1>Training run {escape(os.path.basename(run_dir))}</h1>\n<table>{summary}</table>\n"
        f'<h2>Loss</h2>\n<img alt="loss curves" src="{data_uri(_curves(log, validator.rows))}">\n'
        "<h2>Validation</h2>\n<p>Mean label Dice (labels other than 0) at λ = 0.5, before and after registration; "
        "synthetic pairs are held out from training.</p>\n"
        "<table><tr><th>step</th><th>kind</th><th>pairs</th><th>Dice before</th><th>Dice after</th>"
        f"<th>folding %</th></tr>{table}</table>\n"
    )
    if validator.last_pair is not None:
        picture = data_uri(_pair_slices(validator.last_pair))
        body += f'<h2>One held-out pair</h2>\n<img alt="validation pair" src="{picture}">\n'
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(page(f"ilex train: {os.path.basename(run_dir)}", body))
    return path
