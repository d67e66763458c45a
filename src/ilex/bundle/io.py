"""Saving and loading ilex bundles: a directory with `config.json` and `model.safetensors`."""

from __future__ import annotations

import json
import os
import re
import struct

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._atomic import atomic_directory
from ..errors import BundleError, FileProblem
from ..models.params import fill_parameters, parameter_names, template
from .config import make_config, read_config
from .matching import match_tensors
from .safetensors_stream import SafetensorsWriter, data_checksum, recorded_checksum

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DEFAULT_REPO_ID = "ilex-hub/synthmorph.deform.3"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def save(
    model,
    path: str | os.PathLike,
    *,
    origin: str = "ilex-native",
    overwrite: bool = False,
    extra_config: dict | None = None,
) -> None:
    """Write `model` (a SynthMorph network, an Equinox module) as a bundle directory at `path`
    (config.json + model.safetensors, created whole, or not at all): `ilex.save_bundle`. Raises
    `TypeError` for anything else, images included (those are saved with nibabel or
    `ilex.write_outputs`)."""
    if not isinstance(model, eqx.Module):
        raise TypeError(
            f"save_bundle saves a model (an ilex network) as a bundle directory, not a {type(model).__name__}; "
            "save an image with nibabel (nib.save(result.moved(), 'moved.nii.gz')) or ilex.write_outputs"
        )
    config = make_config(model, origin=origin, extra=extra_config)
    names = parameter_names(model)
    leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))
    with atomic_directory(path, overwrite=overwrite) as tmp:
        with SafetensorsWriter(os.path.join(tmp, WEIGHTS_NAME), names) as writer:
            for leaf in leaves:
                writer.write(np.asarray(leaf, np.float32))
        write_config(config, tmp)


save_bundle = save  # the public name (`ilex.save_bundle`): it saves a model, never an image


def write_config(config: dict, directory: str) -> None:
    """Write config.json beside a finished model.safetensors, recording its data checksum in both.

    Two copies of the digest: damage to the weights header that removes one still leaves the other.
    """
    config["_ilex"]["weights_sha256"] = recorded_checksum(os.path.join(directory, WEIGHTS_NAME))
    with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


def load(
    path_or_repo_id: str | os.PathLike = DEFAULT_REPO_ID,
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    verify: bool = True,
    expected_sha256: str | None = None,
):
    """Load a model from a bundle directory, a FreeSurfer Keras `.h5` file, or a Hugging Face repo id.

    A repo id (`owner/name`) is resolved with `huggingface_hub` into its standard cache; with
    `HF_HUB_OFFLINE=1` only the cache is used. `verify` checks the data checksum that ilex
    records in the bundles it writes (bundles without one are loaded as they are), and the
    SHA-256 of an h5 file that is a known FreeSurfer release or is given `expected_sha256`.
    Raises `BundleError`/`WeightsFileError` (both `ValueError`s) naming the file and the problem.
    """
    target = os.fspath(path_or_repo_id)
    if os.path.isdir(target):
        return load_bundle_dir(target, verify=verify)
    if os.path.isfile(target):
        if target.endswith(".h5") or _looks_like_hdf5(target):
            from ..convert.keras_h5 import load_keras_h5

            return load_keras_h5(target, expected_sha256, verify=verify)
        raise BundleError(target, "expected a bundle directory, a Keras .h5 weights file, or a Hugging Face repo id")
    if _REPO_ID.match(target) and not target.startswith((".", "~")):
        from .hub import download_bundle

        return load_bundle_dir(download_bundle(target, revision=revision, cache_dir=cache_dir), verify=verify)
    raise FileProblem(target, "no such file or directory (and not a Hugging Face repo id of the form owner/name)")


def _looks_like_hdf5(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89HDF\r\n\x1a\n"


def load_bundle_dir(directory: str, *, verify: bool = True):
    """Load the bundle in `directory`; tensors are paired by name, else by structure."""
    from safetensors import SafetensorError, safe_open

    cls, kwargs, config = read_config(os.path.join(directory, CONFIG_NAME))
    config_path = os.path.join(directory, CONFIG_NAME)
    try:
        skeleton = template(cls, kwargs)
    except (TypeError, ValueError) as e:
        raise BundleError(config_path, f"constructor_kwargs do not build {cls.__name__}: {e}") from None
    weights = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise BundleError(weights, "missing; a bundle directory holds config.json and model.safetensors")
    expected = parameter_names(skeleton)
    try:
        with safe_open(weights, framework="numpy") as f:
            found = {}
            for name in f.keys():  # noqa: SIM118 - safe_open is not a dict; it has keys(), no __iter__
                sl = f.get_slice(name)
                if sl.get_dtype() not in ("F32", "F16", "BF16", "F64"):
                    raise BundleError(weights, f"tensor '{name}' has dtype {sl.get_dtype()}, expected floating point")
                found[name] = tuple(sl.get_shape())
            try:
                mapping = match_tensors(expected, found)
            except ValueError as e:
                raise BundleError(weights, f"does not fit {cls.__name__} of config.json: {e}") from None
            # Hashing reads the whole file (3.5 GB for the hypernetwork), so it is done only when
            # there is a recorded digest to compare with.
            recorded = {d for d in (recorded_checksum(weights), config["_ilex"].get("weights_sha256")) if d is not None}
            if verify and recorded and recorded != {data_checksum(weights)[1]}:
                raise BundleError(weights, "data checksum mismatch: the file is damaged; download or convert it again")
            arrays = []
            for name, _ in expected:
                array = np.asarray(f.get_tensor(mapping[name]), dtype=np.float32)
                if not np.isfinite(array).all():
                    raise BundleError(weights, f"tensor '{mapping[name]}' holds NaN or Inf values")
                arrays.append(jnp.asarray(array))
    except BundleError:
        raise
    # A damaged header or data section surfaces as safetensors' own error, or as what reading it
    # raises (a short read, a header that is not JSON, an absurd length).
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, OverflowError, MemoryError, struct.error) as e:
        raise BundleError(weights, f"not a readable safetensors file ({e.__class__.__name__}: {e})") from None
    return fill_parameters(skeleton, arrays)
