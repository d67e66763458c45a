"""Validation at each checkpoint: Dice on held-out synthetic pairs, and on real labelled pairs the user gives.

Synthetic pairs come from a key no training step uses (the same pairs at every checkpoint of every
run with the same data), scored at λ = 0.5 with hard labels. Real pairs (`--validate PAIRS.csv`,
columns moving, fixed, moving_labels, fixed_labels) are registered as `ilex register -m deform
-e EXTENT` would, with the model as it stands, and their labels moved nearest-neighbour.
"""

from __future__ import annotations

import csv
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import FileProblem
from ..transforms.jacobian import folding_fraction, jacobian_determinant
from .data import TrainingData
from .objective import pair_displacement, warp_one_hot
from .settings import TrainSettings

__all__ = ["VALIDATION_COLUMNS", "Validator", "label_dice", "read_pairs"]

VALIDATION_COLUMNS = ("step", "kind", "pairs", "dice_before", "dice_after", "folding_percent")
_HELD_OUT_KEY = 0x5EED  # synthetic pairs drawn from this key are never training pairs (those fold in the step)
_SYNTHETIC_PAIRS = 4
_HYPER = 0.5
_PAIR_COLUMNS = ("moving", "fixed", "moving_labels", "fixed_labels")


def label_dice(moved: np.ndarray, fixed: np.ndarray) -> float:
    """Mean Dice over the labels (not 0) present in both maps."""
    moved, fixed = np.asarray(moved).astype(np.int64), np.asarray(fixed).astype(np.int64)
    labels = np.intersect1d(np.unique(moved), np.unique(fixed))
    labels = labels[labels != 0]
    if labels.size == 0:
        return float("nan")
    scores = []
    for label in labels:
        a, b = moved == label, fixed == label
        scores.append(2.0 * np.sum(a & b) / (np.sum(a) + np.sum(b)))
    return float(np.mean(scores))


def read_pairs(path: str) -> list[dict[str, str]]:
    """The rows of a validation CSV, every named file checked to exist."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise FileProblem(path, f"cannot read the validation pairs ({e.strerror or e})") from None
    if not rows:
        raise FileProblem(
            path, "has no pairs (a header row moving,fixed,moving_labels,fixed_labels, then a row per pair)"
        )
    missing = [c for c in _PAIR_COLUMNS if c not in rows[0]]
    if missing:
        raise FileProblem(path, f"lacks the column(s) {', '.join(missing)}; needs {', '.join(_PAIR_COLUMNS)}")
    base = os.path.dirname(os.path.abspath(path))
    out = []
    for i, row in enumerate(rows, start=2):
        files = {c: os.path.join(base, row[c]) for c in _PAIR_COLUMNS}
        for column, file in files.items():
            if not os.path.isfile(file):
                raise FileProblem(path, f"line {i}: {column} {row[column]!r} does not exist")
        out.append(files)
    return out


@eqx.filter_jit
def _synthetic_scores(model, samples, steps):
    def one(sample):
        disp, _ = pair_displacement(model, jnp.float32(_HYPER), sample.source, sample.target, steps)
        moved = jnp.argmax(warp_one_hot(sample.source_labels, disp), axis=-1)
        return moved, folding_fraction(jacobian_determinant(disp))

    return jax.lax.map(one, samples)


class Validator:
    """Scores the model at each checkpoint and keeps the rows (also in `RUN_DIR/validation.csv`)."""

    def __init__(self, settings: TrainSettings, data: TrainingData):
        self.settings, self.rows = settings, []
        keys = jax.random.split(jax.random.key(_HELD_OUT_KEY), _SYNTHETIC_PAIRS)
        self.samples = jax.vmap(data.sample)(keys)
        self.pairs = read_pairs(settings.validate) if settings.validate else []
        self._labels: dict[int, tuple] = {}  # real pair -> (moving labels, fixed labels, Dice before)
        self.last_pair: dict | None = None  # one synthetic pair's slices before and after, for the page

    def score(self, step: int, model, run_dir: str) -> list[dict]:
        moved, folding = _synthetic_scores(model, self.samples, self.settings.int_steps)
        source = np.asarray(jnp.argmax(self.samples.source_labels, -1))
        target = np.asarray(jnp.argmax(self.samples.target_labels, -1))
        moved = np.asarray(moved)
        rows = [
            self._row(
                step,
                "synthetic",
                [label_dice(s, t) for s, t in zip(source, target, strict=True)],
                [label_dice(m, t) for m, t in zip(moved, target, strict=True)],
                100.0 * float(np.mean(folding)),
            )
        ]
        self.last_pair = {
            "source": np.asarray(self.samples.source[0, ..., 0]),
            "target": np.asarray(self.samples.target[0, ..., 0]),
            "moved_labels": moved[0],
            "target_labels": target[0],
            "source_labels": source[0],
        }
        if self.pairs:
            rows.append(self._real(step, model))
        self.rows.extend(rows)
        self._append(run_dir, rows)
        return rows

    def _real(self, step: int, model) -> dict:
        from ..image.io import load_image
        from ..registration.methods.synthmorph import SynthMorphDeformMethod
        from ..registration.pipeline import register, resample
        from ..transforms.compose import matrix_field

        before, after, folding = [], [], []
        for i, pair in enumerate(self.pairs):
            result = register(
                pair["moving"],
                pair["fixed"],
                model,
                method=SynthMorphDeformMethod.name,  # the method the trained network is for
                hyper=_HYPER,
                extent=self.settings.extent,
            )
            if i not in self._labels:  # read once; the Dice with the headers alone is the same at every checkpoint
                labels = load_image(pair["moving_labels"], what="moving labels", check_values=False)
                fixed_labels = load_image(pair["fixed_labels"], what="fixed labels", check_values=False).data
                data = jnp.asarray(labels.data, jnp.float32)
                world = np.linalg.inv(labels.affine) @ result.fixed.affine
                unmoved = resample(
                    data, jnp.asarray(matrix_field(world, result.fixed.shape)), "nearest", jnp.float32(0)
                )
                self._labels[i] = (data, fixed_labels, label_dice(np.rint(unmoved), fixed_labels))
            data, fixed_labels, dice_before = self._labels[i]
            moved = resample(data, jnp.asarray(result.forward_vox), "nearest", jnp.float32(0))
            before.append(dice_before)
            after.append(label_dice(np.rint(moved), fixed_labels))
            det = jacobian_determinant(jnp.asarray(result.forward_vox))
            folding.append(100.0 * float(folding_fraction(det)))
        return self._row(step, "real", before, after, float(np.mean(folding)))

    @staticmethod
    def _row(step: int, kind: str, before: list[float], after: list[float], folding: float) -> dict:
        return {
            "step": step,
            "kind": kind,
            "pairs": len(after),
            "dice_before": float(np.nanmean(before)),
            "dice_after": float(np.nanmean(after)),
            "folding_percent": folding,
        }

    @staticmethod
    def _append(run_dir: str, rows: list[dict]) -> None:
        path = os.path.join(run_dir, "validation.csv")
        new = not os.path.exists(path)
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, VALIDATION_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerows(rows)
