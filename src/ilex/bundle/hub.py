"""Resolving a Hugging Face repo id to a local bundle directory, through the standard cache."""

from __future__ import annotations

import os

from ..errors import BundleError, WeightsNotFound

_FILES = ["config.json", "model.safetensors"]


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def download_bundle(repo_id: str, *, revision: str | None = None, cache_dir: str | None = None) -> str:
    """The snapshot directory of `repo_id` (downloaded if needed; cache only when offline)."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=_FILES,
            local_files_only=_offline(),
        )
    except LocalEntryNotFoundError:
        raise WeightsNotFound(
            repo_id,
            "not in the local Hugging Face cache and the hub cannot be reached; download it where there is a network "
            "(`hf download "
            + repo_id
            + "`), or pass a bundle directory or FreeSurfer's synthmorph.deform.3.h5 with -w",
        ) from None
    except RepositoryNotFoundError:
        raise BundleError(repo_id, "no such repository on the Hugging Face hub (or it is private)") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise BundleError(
            repo_id, f"could not be fetched from the Hugging Face hub ({e.__class__.__name__}: {e})"
        ) from None
