"""Everything a training run is made of, as one record: from the command line, a config file or Python.

The record is written into the run folder (`config.yaml`, resolved values) and checked again on
`--resume`, so a run cannot silently continue with another recipe.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

from ..errors import FileProblem, OptionError
from .objective import DATA_TERMS

__all__ = [
    "RUN_CONFIG",
    "TrainSettings",
    "read_config_file",
    "read_run_settings",
    "settings_from",
    "write_run_settings",
]

RUN_CONFIG = "config.yaml"  # the resolved settings, in the run folder

# Settings that may change on --resume without changing the run (where it goes, how long, how often).
RESUMABLE = frozenset({"steps", "checkpoint_every", "validate", "log_every", "resume"})


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """A training run of SynthMorph's deformable hypernetwork (docs/train.md says where each default comes from)."""

    labels: str | None = None  # folder or CSV of label maps; None: SynthMorph's noise shapes
    label_table: str | None = None  # CSV label,new_label merging or dropping labels
    resample: bool = False  # label maps on different grids are resampled onto the first one's
    steps: int = 1000
    checkpoint_every: int = 100
    log_every: int = 0  # lines off a terminal every N steps; 0: at each checkpoint
    batch_size: int = 1
    seed: int = 0
    extent: int = 64  # the training grid's side, full resolution (the U-Net sees extent/2)
    widths: int | tuple[int, ...] | None = (
        None  # one width for every conv, or 12 (enc 4, dec 4, add 4); None: 64 or --init's
    )
    hyper_units: int = 32  # hypernetwork: 4 dense layers of this width, as synthmorph.deform.3
    int_steps: int = 5  # scaling and squaring steps in training (mri_synthmorph registers with 7)
    init: str | None = None  # weights to start from: FreeSurfer's .h5 or an ilex bundle
    data: str = "mse"  # label data term: mse (one-hot MSE) or dice (soft Dice)
    lambda_min: float = 0.0
    lambda_max: float = 1.0
    lambda_ends: float = 0.2  # share of samples whose λ is exactly lambda_min or lambda_max
    learning_rate: float = 1e-4
    remat: bool | None = None  # gradient checkpointing per U-Net pass; None: on from extent 128
    validate: str | None = None  # CSV of real labelled pairs scored at each checkpoint
    resume: bool = False

    def __post_init__(self):
        if self.widths is not None:
            widths = (self.widths,) if isinstance(self.widths, int) else tuple(int(w) for w in self.widths)
            object.__setattr__(self, "widths", widths)
        check = _Checker()
        check.positive("steps", self.steps)
        check.positive("checkpoint_every", self.checkpoint_every)
        check.positive("batch_size", self.batch_size)
        check.positive("hyper_units", self.hyper_units)
        check.at_least("log_every", self.log_every, 0)
        check.at_least("int_steps", self.int_steps, 0)
        if self.extent < 32 or self.extent % 32:
            raise OptionError(
                f"extent must be a positive multiple of 32 (the U-Net halves extent/2 four times), got {self.extent}"
            )
        if self.widths is not None and (len(widths) not in (1, 12) or any(w < 1 for w in widths)):
            raise OptionError(
                f"widths must be one positive width or 12 (4 encoder, 4 decoder, 4 after), got {list(widths)}"
            )
        if self.data not in DATA_TERMS:
            raise OptionError(f"data term must be one of {', '.join(DATA_TERMS)}, got {self.data!r}")
        if not 0.0 <= self.lambda_min < self.lambda_max <= 1.0:
            raise OptionError(
                f"need 0 <= lambda_min < lambda_max <= 1, got {self.lambda_min} and {self.lambda_max}",
            )
        if not 0.0 <= self.lambda_ends <= 1.0:
            raise OptionError(f"lambda_ends is a share in [0, 1], got {self.lambda_ends}")
        if not self.learning_rate > 0:
            raise OptionError(f"learning rate must be positive, got {self.learning_rate}")

    @property
    def unet_widths(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(enc_nf, dec_nf, add_nf) of the model these settings build."""
        widths = self.widths or (64,)
        w = widths * 12 if len(widths) == 1 else widths
        return tuple(w[:4]), tuple(w[4:8]), tuple(w[8:12])

    @property
    def use_remat(self) -> bool:
        return self.extent >= 128 if self.remat is None else bool(self.remat)

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["widths"] = None if self.widths is None else list(self.widths)
        return out

    def recipe_differences(self, other: TrainSettings) -> list[str]:
        """The settings that differ from `other` and would make a resumed run another run."""
        mine, theirs = self.as_dict(), other.as_dict()
        return [k for k in mine if k not in RESUMABLE and mine[k] != theirs[k]]


class _Checker:
    def positive(self, name: str, value: int) -> None:
        self.at_least(name, value, 1)

    def at_least(self, name: str, value: int, low: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise OptionError(f"{name} must be an integer >= {low}, got {value!r}")


_FIELDS = {f.name: f for f in dataclasses.fields(TrainSettings)}


def read_config_file(path: str | os.PathLike) -> dict:
    """The keys of a YAML (.yaml/.yml), TOML (.toml) or JSON config file; dashes in keys read as underscores.

    A key that is not a setting is refused, naming the file and the key.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise FileProblem(path, f"cannot read the config file ({e.strerror or e})") from None
    try:
        if path.endswith(".toml"):
            import tomllib

            values = tomllib.loads(raw.decode("utf-8"))
        elif path.endswith(".json"):
            values = json.loads(raw)
        else:
            import yaml

            values = yaml.safe_load(raw) or {}
    except Exception as e:  # noqa: BLE001  every parser's own error, said in one line
        raise FileProblem(path, f"not a valid config file ({str(e).splitlines()[0]})") from None
    if not isinstance(values, Mapping):
        raise FileProblem(path, "a config file holds keys and values at its top level")
    out = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in _FIELDS:
            raise FileProblem(path, f"{key!r} is not a training setting; known: {', '.join(sorted(_FIELDS))}")
        out[name] = value
    return out


def settings_from(config: str | None = None, **given) -> TrainSettings:
    """Settings from a config file, with the keyword arguments (those not None) taking precedence."""
    values = read_config_file(config) if config else {}
    values.update({k: v for k, v in given.items() if v is not None})
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise OptionError(f"not training settings: {', '.join(unknown)}")
    if isinstance(values.get("widths"), Sequence) and not isinstance(values["widths"], str):
        values["widths"] = tuple(values["widths"])
    return TrainSettings(**values)


def write_run_settings(run_dir: str, settings: TrainSettings) -> None:
    """`RUN_DIR/config.yaml`: every setting, resolved; `ilex train --config` reads it back."""
    import yaml

    from .._atomic import atomic_file

    with atomic_file(os.path.join(run_dir, RUN_CONFIG)) as tmp, open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(dataclasses.replace(settings, resume=False).as_dict(), f, sort_keys=False)


def read_run_settings(run_dir: str) -> TrainSettings | None:
    """The settings a run folder was started with, or None where it has none."""
    path = os.path.join(run_dir, RUN_CONFIG)
    return settings_from(path) if os.path.isfile(path) else None
