"""The ilex bundle format: `config.json` + `model.safetensors`, local or on the Hugging Face hub."""

from .io import DEFAULT_REPO_ID as DEFAULT_REPO_ID
from .io import load as load
from .io import save as save
from .io import save_bundle as save_bundle
