"""The bundle a run leaves (`RUN_DIR/bundle`) and its model card: what it was trained on, how, and whose it is."""

from __future__ import annotations

import os

from ..bundle import save_bundle
from ..bundle.config import WEIGHTS_LICENCE
from .data import TrainingData
from .settings import TrainSettings

__all__ = ["licence_of", "write_trained_bundle"]


def licence_of(settings: TrainSettings, data: TrainingData) -> str:
    """Who decides the weights' terms: FreeSurfer's licence if fine-tuned from its weights, else the data's owner."""
    if settings.init is not None:
        return (
            f"fine-tuned from {os.path.basename(settings.init)}: if those are FreeSurfer's SynthMorph weights, "
            f"their licence still applies to these ({WEIGHTS_LICENCE})"
        )
    if data.maps is None:
        return (
            "trained from scratch on SynthMorph's noise shapes only (no acquired images, no third-party data): "
            "the weights are the trainer's own to license"
        )
    return (
        f"trained from scratch on the label maps in {settings.labels}: the terms of those label maps decide "
        "what may be done with these weights"
    )


def write_trained_bundle(
    run_dir: str, model, settings: TrainSettings, data: TrainingData, validation: list[dict], *, steps: int
) -> str:
    """Write `RUN_DIR/bundle` (config.json with the card, model.safetensors), whole or not at all."""
    path = os.path.join(run_dir, "bundle")
    last = {row["kind"]: row for row in validation if row["step"] == steps}
    card = {
        "description": (
            f"SynthMorph deformable hypernetwork (synthmorph.deform.3 layout) trained by ilex train for {steps} steps "
            f"on {data.kind} at extent {settings.extent} (the U-Net sees {settings.extent // 2}^3); register with "
            f"`ilex register -m deform -w {path} -e {settings.extent}`."
        ),
        "copyright": licence_of(settings, data),
        "intended_use": (
            "Deformable registration of two affinely aligned 3-D images of any contrast, at the training extent; "
            "validate on your own data before use."
        ),
        "training": {
            "recipe": "ilex train (docs/train.md): HyperMorph loss (1 - lambda) data + lambda smoothness",
            "data": data.kind,
            "labels": list(data.label_values),
            "steps": steps,
            "settings": settings.as_dict(),
            "validation": last,
        },
    }
    save_bundle(model, path, overwrite=True, extra_config=card)
    return path
