"""A template's output directory: where each file goes, and the state a rerun resumes from
(state.json, with a fingerprint of the inputs and settings, and rounds.csv)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import asdict

from .._atomic import atomic_file
from ..errors import OptionError
from .inputs import TemplateInput
from .settings import TemplateSettings

ROUND_COLUMNS = (
    "round",
    "mean_displacement_mm",
    "max_displacement_mm",
    "mean_similarity",
    "template_change",
    "averaged",
    "failed",
    "flagged",
    "seconds",
    "reduce_seconds",
    "peak_memory_gib",
    # The cluster's state (`rounds.cluster_state`); state.json's rows also hold each worker's busy seconds.
    "workers",
    "busy_seconds_mean",
    "busy_seconds_max",
    "waiting_seconds_mean",
    "serial_seconds",
    "serial_share",
    "memory_registration_gib",
    "memory_share_gib",
    "disk_round_gib",
)
STATE_VERSION = 1
# A round's own files (warps, moved images) are read back once by the reduction and deleted when the
# round is committed: uncompressed, since gzip took 2.4 s of a 1 mm registration's ~4 s to write a
# warp and 0.5 s to read it back (measured; 85 MB per warp, 28 MB per moved image at 1 mm on disk).
INTERMEDIATE = ".nii"


def fingerprint(inputs: list[TemplateInput], settings: TemplateSettings, initial: str | None) -> str:
    """What a resumed build must share with the one it continues: the inputs (paths, sizes,
    modification times), the initial template and the settings, as a SHA-256 hex digest."""

    def stamp(path):
        st = os.stat(path)
        return [os.path.abspath(path), st.st_size, st.st_mtime_ns]

    own = asdict(settings)
    if own.get("average") == "mean":  # the one average before there was a choice: older builds still resume
        del own["average"]
    what = {
        "inputs": [[i.id, *stamp(i.path), i.init and stamp(i.init)] for i in inputs],
        "initial": initial and stamp(initial),
        "settings": own,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


class TemplateFolder:
    """The output directory `outdir`: its paths, and its state (state.json, rounds.csv).

    The state is a dict: `completed` (the last committed round, -1 before round 0), `rounds`
    (the rows of rounds.csv), `images` (the final outputs per image id) and `fingerprint`.
    A committed round's own directory is deleted unless `keep_rounds`."""

    def __init__(self, outdir: str, keep_rounds: bool = False):
        self.outdir = outdir
        self.keep_rounds = keep_rounds
        self.state_path = os.path.join(outdir, "state.json")

    def path(self, *parts) -> str:
        return os.path.join(self.outdir, *parts)

    @property
    def template(self) -> str:
        """The final template: template.nii.gz."""
        return self.path("template.nii.gz")

    def round_template(self, k: int) -> str:
        return self.path(f"template_round{k}.nii.gz")

    def round_dir(self, k: int) -> str:
        """Round `k`'s intermediate files."""
        return self.path(f"round{k}")

    def load_state(self, fingerprint: str) -> dict:
        """The state on disk, or a fresh one; raises `OptionError` when the directory holds a build
        of other inputs or settings."""
        if not os.path.isfile(self.state_path):
            return {"version": STATE_VERSION, "fingerprint": fingerprint, "completed": -1, "rounds": [], "images": {}}
        with open(self.state_path, encoding="utf-8") as f:
            state = json.load(f)
        if state.get("fingerprint") != fingerprint:
            raise OptionError(
                f"{self.outdir}: holds a template built from other images or settings (state.json); "
                "choose another output directory, or remove it to start again"
            )
        return state

    def commit(self, state: dict, k: int, row: dict | None) -> None:
        """Round `k` is complete: its row into rounds.csv, then state.json, then its files go."""
        state["completed"] = k
        if row is not None:
            state["rounds"] = [r for r in state["rounds"] if r["round"] != k] + [row]
        _write_rounds_csv(self.path("rounds.csv"), state["rounds"])
        _write_json(self.state_path, state)
        if not self.keep_rounds:
            shutil.rmtree(self.round_dir(k), ignore_errors=True)


def _write_json(path: str, document: dict) -> None:
    with atomic_file(path, suffix=".json") as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2)
        f.write("\n")


def _write_rounds_csv(path: str, rows: list[dict]) -> None:
    with atomic_file(path, suffix=".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ROUND_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: ("" if row.get(k) is None else round(row[k], 6) if isinstance(row[k], float) else row[k])
                    for k in ROUND_COLUMNS
                }
            )
