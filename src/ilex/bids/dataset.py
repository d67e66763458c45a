"""The images of a BIDS dataset that `ilex bids` registers, found with pybids and checked before any work.

Refused with one line (`OptionError`/`FileProblem`), before anything is written: a folder that is not
a BIDS dataset (no dataset_description.json), participant or session labels it does not have, a
--bids-filter-file that cannot be read or names entities pybids does not know, and a filter that
matches no image.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ..errors import FileProblem, OptionError

# Entities that tell two images of one session apart; they are kept in the output names, in BIDS order.
NAME_ENTITIES = ("acquisition", "ceagent", "reconstruction", "run")
_SHORT = {"acquisition": "acq", "ceagent": "ce", "reconstruction": "rec", "run": "run"}


@dataclass(frozen=True)
class BidsImage:
    """One image to register: its path and the entities its derivatives are named by."""

    path: str
    subject: str
    session: str | None = None
    entities: dict = field(default_factory=dict)  # NAME_ENTITIES present, e.g. {"run": 1}

    @property
    def prefix(self) -> str:
        """`sub-X[_ses-Y][_acq-A][_ce-C][_rec-R][_run-N]`: what every derivative's name starts with."""
        parts = [f"sub-{self.subject}"] + ([f"ses-{self.session}"] if self.session else [])
        parts += [f"{_SHORT[k]}-{self.entities[k]}" for k in NAME_ENTITIES if self.entities.get(k) is not None]
        return "_".join(parts)

    @property
    def folder(self) -> str:
        """`sub-X[/ses-Y]/anat`, relative to the dataset."""
        return os.path.join(f"sub-{self.subject}", *([f"ses-{self.session}"] if self.session else []), "anat")


def _labels(given: list[str] | None, prefix: str) -> list[str] | None:
    """Labels as BIDS Apps take them: with or without their `sub-`/`ses-` prefix."""
    return None if not given else [g.removeprefix(prefix) for g in given]


def read_filter_file(path: str | os.PathLike, suffix: str = "T1w") -> dict:
    """The entity filters a --bids-filter-file gives for `suffix`'s images, as fMRIPrep reads one: a
    JSON object whose key `suffix.lower()` (`"t1w"`) holds `{entity: value}` (a value may be a list,
    or null for "absent"). Raises `FileProblem` for a file that cannot be read or is not such an object."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except OSError as e:
        raise FileProblem(path, f"cannot read the BIDS filter file ({e.strerror})") from None
    except ValueError as e:
        raise FileProblem(path, f"not a JSON file ({e})") from None
    key = suffix.lower()
    if not isinstance(document, dict) or not isinstance(document.get(key, {}), dict):
        raise FileProblem(path, f'a BIDS filter file is a JSON object such as {{"{key}": {{"acquisition": "mprage"}}}}')
    if key not in document:
        raise FileProblem(
            path, f"no {key!r} key: nothing in it filters the {suffix} images (keys: {', '.join(document)})"
        )
    return dict(document[key])


def find_images(
    bids_dir: str | os.PathLike,
    *,
    participant_label: list[str] | None = None,
    session_label: list[str] | None = None,
    filters: dict | None = None,
    suffix: str = "T1w",
    filter_file: str | None = None,
    exclude: tuple[str | None, ...] = (),
) -> list[BidsImage]:
    """The `suffix` images (datatype anat, NIfTI) of the BIDS dataset at `bids_dir` for the given
    participants and sessions (labels with or without `sub-`/`ses-`; None: all), narrowed by
    `filters` (`{entity: value}`, pybids' names: `acquisition`, `run`, ...; read from
    `filter_file`, named in messages), in the order of their paths. Files under the folders
    `exclude` are left out: a derivatives folder inside the dataset but not named `derivatives`
    (which pybids leaves out itself) holds images with the same entities.

    Raises `FileProblem` when `bids_dir` is not a BIDS dataset, and `OptionError` for labels the
    dataset does not have, unknown filter entities, or when nothing matches.
    """
    bids_dir = os.path.abspath(os.fspath(bids_dir))
    if not os.path.isdir(bids_dir):
        raise FileProblem(bids_dir, "no such BIDS dataset folder")
    description = os.path.join(bids_dir, "dataset_description.json")
    if not os.path.isfile(description):
        raise FileProblem(bids_dir, "not a BIDS dataset: it has no dataset_description.json")
    try:
        with open(description, encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError) as e:
        raise FileProblem(description, f"not a readable JSON file ({e})") from None
    try:
        from bids import BIDSLayout
    except ImportError:
        raise OptionError("ilex bids needs pybids: pip install 'ilex[bids]'") from None

    try:
        layout = BIDSLayout(bids_dir, validate=False)
    except Exception as e:  # noqa: BLE001 — pybids' own errors on a damaged dataset: one line, the folder named
        raise FileProblem(bids_dir, f"pybids cannot index this dataset ({type(e).__name__}: {e})") from None
    subjects = _labels(participant_label, "sub-")
    sessions = _labels(session_label, "ses-")
    for given, known, what in (
        (subjects, layout.get_subjects(), "participant"),
        (sessions, layout.get_sessions(), "session"),
    ):
        missing = [g for g in given or () if g not in known]
        if missing:
            raise OptionError(
                f"--{what}-label {' '.join(missing)}: not in {bids_dir} "
                f"({what}s there: {', '.join(sorted(known)) or 'none'})"
            )
    filters = dict(filters or {})
    where = f"--bids-filter-file {filter_file}" if filter_file else "the BIDS filter"
    known_entities = set(layout.get_entities())
    unknown = [k for k in filters if k not in known_entities]
    if unknown:
        raise OptionError(
            f"{where}: unknown entities {', '.join(map(repr, unknown))} (pybids' names, e.g. acquisition, run, "
            "reconstruction)"
        )
    query = {"datatype": "anat", "suffix": suffix, "extension": [".nii", ".nii.gz"], **filters}
    if subjects:
        query["subject"] = subjects
    if sessions:
        query["session"] = sessions
    try:
        files = layout.get(return_type="object", **query)
    except Exception as e:  # noqa: BLE001 — a filter value pybids refuses
        raise OptionError(f"{where}: pybids refuses it ({type(e).__name__}: {e})") from None
    skip = [os.path.realpath(e) + os.sep for e in exclude if e]
    files = [f for f in files if not any(os.path.realpath(f.path).startswith(e) for e in skip)]
    if not files:
        asked = ", ".join(f"{k}={v}" for k, v in query.items() if k not in ("extension",))
        raise OptionError(f"{bids_dir}: no image matches ({asked})")
    images = []
    for f in sorted(files, key=lambda f: f.path):
        entities = f.get_entities()
        images.append(
            BidsImage(
                f.path,
                str(entities["subject"]),
                None if entities.get("session") is None else str(entities["session"]),
                {k: str(entities[k]) for k in NAME_ENTITIES if entities.get(k) is not None},
            )
        )
    return images
