"""Checkpoints of a run: weights, Adam's moments, the run's key and the step, each written whole or not at all.

A checkpoint is a folder `RUN_DIR/checkpoints/step-NNNNNNNN/` holding `state.eqx` (Equinox's leaf
serialisation of weights and optimiser state, bit for bit) and `meta.json` (step, key, settings).
The two newest are kept, so a checkpoint being written when the run is killed costs nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import equinox as eqx
import jax
import numpy as np

from .._atomic import atomic_directory
from ..errors import FileProblem

__all__ = ["CHECKPOINTS", "latest_checkpoint", "read_checkpoint", "write_checkpoint"]

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})$")
_KEEP = 2


def _folder(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, CHECKPOINTS, f"step-{step:08d}")


def write_checkpoint(run_dir: str, step: int, params, opt_state, run_key: jax.Array, settings: dict) -> str:
    """Write the state after `step` steps; older checkpoints beyond the newest two are removed after."""
    path = _folder(run_dir, step)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_directory(path, overwrite=True) as tmp:
        eqx.tree_serialise_leaves(os.path.join(tmp, "state.eqx"), (params, opt_state))
        meta = {
            "step": step,
            "key": np.asarray(jax.random.key_data(run_key)).tolist(),
            "key_impl": str(jax.random.key_impl(run_key)),
            "settings": settings,
        }
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
    for old in _steps(run_dir)[:-_KEEP]:
        shutil.rmtree(_folder(run_dir, old), ignore_errors=True)
    return path


def _steps(run_dir: str) -> list[int]:
    folder = os.path.join(run_dir, CHECKPOINTS)
    if not os.path.isdir(folder):
        return []
    found = (_NAME.match(name) for name in os.listdir(folder))
    return sorted(int(m.group(1)) for m in found if m)


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest complete checkpoint folder of `run_dir`, or None."""
    for step in reversed(_steps(run_dir)):
        path = _folder(run_dir, step)
        if os.path.isfile(os.path.join(path, "state.eqx")) and os.path.isfile(os.path.join(path, "meta.json")):
            return path
    return None


def read_checkpoint(path: str, like_params, like_opt_state) -> tuple[int, object, object, jax.Array, dict]:
    """(step, params, opt_state, run key, settings) from a checkpoint folder; `like_*` give the structure."""
    try:
        with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        params, opt_state = eqx.tree_deserialise_leaves(os.path.join(path, "state.eqx"), (like_params, like_opt_state))
    except (OSError, ValueError, RuntimeError) as e:
        raise FileProblem(path, f"not a readable checkpoint of this run ({e})") from None
    key = jax.random.wrap_key_data(np.asarray(meta["key"], np.uint32), impl=meta.get("key_impl", "threefry2x32"))
    return int(meta["step"]), params, opt_state, key, meta.get("settings", {})
