"""The record beside each pair's outputs of the settings that made them: what lets a rerun skip a
finished pair and redo one made otherwise."""

from __future__ import annotations

import json

from ..registration.outputs import output_files, outputs_complete
from .pairs import Pair
from .settings import BatchSettings

# Beside each pair's first output: the settings that made its outputs (`finished`).
MANIFEST_SUFFIX = ".ilex-batch.json"


def manifest_path(outputs) -> str | None:
    files = output_files(outputs)
    return files[0][1] + MANIFEST_SUFFIX if files else None


def finished(pair: Pair, settings: BatchSettings) -> tuple[bool, str]:
    """(True, "") when every output of `pair` exists and its manifest says that these settings
    made them; else (False, why a rerun redoes it: "" when outputs are missing)."""
    if pair.problem is not None or not outputs_complete(pair.outputs):
        return False, ""
    try:
        with open(manifest_path(pair.outputs), encoding="utf-8") as f:
            made = json.load(f)["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return False, "redone: its outputs exist but no record says ilex batch made them"
    wanted = settings.pair_settings(pair)
    changed = [f"{k} {made.get(k)!r} -> {v!r}" for k, v in wanted.items() if made.get(k) != v]
    if changed:
        return False, f"redone: its outputs were made with other settings ({'; '.join(changed)})"
    return True, ""


def write_manifest(pair: Pair, settings: BatchSettings) -> None:
    """Write `pair`'s manifest (atomically), once its outputs have landed."""
    from .. import __version__
    from .._atomic import atomic_file

    with atomic_file(manifest_path(pair.outputs), suffix=".json") as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump({"ilex_version": __version__, "settings": settings.pair_settings(pair)}, f, indent=2)
        f.write("\n")
