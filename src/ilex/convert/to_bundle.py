"""`ilex convert`: FreeSurfer's Keras h5 weights to an ilex bundle, streamed.

The real file is 3.5 GB with single arrays of 432 MiB, so arrays are copied in blocks of rows
and memory stays near one block. With `hyper`, the hypernetwork is evaluated once and the
bundle holds only the generated U-Net (26.6 M parameters instead of 877 M for the real model).
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
from tqdm.auto import tqdm

from .._atomic import atomic_directory
from ..bundle.config import make_config
from ..bundle.io import WEIGHTS_NAME, write_config
from ..bundle.safetensors_stream import SafetensorsWriter
from ..errors import OptionError, WeightsFileError
from ..models.params import parameter_names, template
from ..models.synthmorph_deform.model import SynthMorphDeform
from ..models.synthmorph_deform.unet import SynthMorphUNet
from .keras_h5 import KerasWeight, infer_architecture, open_keras_weights, read_array
from .releases import file_sha256, verify_release

_BLOCK_BYTES = 64 << 20  # per read; bounds the converter's working memory


def convert(
    weights_h5: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    hyper: float | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    expected_sha256: str | None = None,
) -> str:
    """Convert a Keras h5 weights file into a bundle directory `out_dir`; returns its path.

    `hyper` (λ in [0, 1]) writes the fixed-λ U-Net bundle instead of the hypernetwork.
    `progress` shows a byte progress bar on stderr (default: when stderr is a terminal).
    The directory appears complete or not at all. Raises `WeightsFileError` for bad files,
    including a known FreeSurfer release (or `expected_sha256`) whose digest does not match.
    """
    path = os.fspath(weights_h5)
    if hyper is not None and not 0.0 <= float(hyper) <= 1.0:
        raise OptionError(f"--hyper {hyper}: λ must lie in [0, 1]")
    with open_keras_weights(path):  # a foreign or broken file is named as such before hashing it
        pass
    source_sha256 = verify_release(path, expected_sha256) or file_sha256(path)
    with open_keras_weights(path) as weights:
        cls, kwargs = infer_architecture(path, [w.shape for w in weights])
        origin = f"converted from {os.path.basename(path)}"
        if cls is not SynthMorphDeform and hyper is not None:
            raise OptionError(f"--hyper: {os.path.basename(path)} holds the affine/rigid network, which has no λ")
        show = sys.stderr.isatty() if progress is None else progress
        total = sum(4 * math.prod(w.shape) for w in weights)
        with (
            atomic_directory(out_dir, overwrite=overwrite) as tmp,
            tqdm(total=total, unit="B", unit_scale=True, desc="convert", disable=not show, file=sys.stderr) as bar,
        ):
            if hyper is None:
                model = template(cls, kwargs)
                _stream_copy(path, weights, os.path.join(tmp, WEIGHTS_NAME), parameter_names(model), bar)
            else:
                model = _stream_fixed(path, weights, kwargs, float(hyper), os.path.join(tmp, WEIGHTS_NAME), bar)
            config = make_config(model, origin=origin)
            config["_ilex"]["source_sha256"] = source_sha256
            write_config(config, tmp)
    return os.path.abspath(os.fspath(out_dir))


def _stream_copy(path: str, weights: list[KerasWeight], out: str, names, bar) -> None:
    with SafetensorsWriter(out, names) as writer:
        for w in weights:
            row_bytes = 4 * math.prod(w.shape[1:]) if len(w.shape) > 1 else 4 * math.prod(w.shape)
            step = max(1, _BLOCK_BYTES // max(row_bytes, 1)) if len(w.shape) > 1 else None
            if step is None:
                writer.write(read_array(path, w))
            else:
                for start in range(0, w.shape[0], step):
                    writer.write(read_array(path, w, slice(start, start + step)))
            bar.update(4 * math.prod(w.shape))


def _stream_fixed(path: str, weights: list[KerasWeight], kwargs: dict, hyper: float, out: str, bar) -> SynthMorphUNet:
    """Generate each kernel `h @ Wk + bk` block by block of output columns and write it."""
    import jax.numpy as jnp
    from jax import lax

    nd = kwargs["nb_hyp_layers"]
    dense = [jnp.asarray(read_array(path, w)) for w in weights[: 2 * nd]]
    h = jnp.full((kwargs["nb_hyp_params"],), hyper, jnp.float32)
    for kernel, bias in zip(dense[::2], dense[1::2], strict=False):
        h = jnp.maximum(jnp.dot(h, kernel, precision=lax.Precision.HIGHEST) + bias, 0.0)
    bar.update(sum(4 * a.size for a in dense))
    unet_kwargs = {k: v for k, v in kwargs.items() if not k.startswith("nb_hyp")}
    skeleton = template(SynthMorphUNet, {**unet_kwargs, "hyper": hyper})
    with SafetensorsWriter(out, parameter_names(skeleton)) as writer:
        convs = weights[2 * nd :]
        for j in range(0, len(convs), 4):
            hk, hkb, hb, hbb = convs[j : j + 4]
            cols = max(1, _BLOCK_BYTES // (4 * hk.shape[0]))
            for start in range(0, hk.shape[1], cols):
                block = slice(start, start + cols)
                try:
                    wk = hk.dataset[:, block]
                    bk = hkb.dataset[block]
                except (OSError, RuntimeError, ValueError) as e:
                    raise WeightsFileError(path, f"cannot read '{hk.name}': truncated or corrupt ({e})") from None
                part = jnp.dot(h, jnp.asarray(wk, jnp.float32), precision=lax.Precision.HIGHEST) + jnp.asarray(
                    bk, jnp.float32
                )
                part = np.asarray(part)
                if not np.isfinite(part).all():
                    raise WeightsFileError(path, f"'{hk.name}' holds NaN or Inf values")
                writer.write(part)
                bar.update(4 * (wk.size + bk.size))
            bias = np.asarray(jnp.dot(h, read_array(path, hb), precision=lax.Precision.HIGHEST) + read_array(path, hbb))
            writer.write(bias)
            bar.update(4 * (math.prod(hb.shape) + math.prod(hbb.shape)))
    return skeleton  # shapes only: config.json needs the architecture and its arguments
