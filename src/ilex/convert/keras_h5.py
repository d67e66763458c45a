"""Reading FreeSurfer's Keras-2 h5 weight files, by position, as Keras itself does.

Keras' `load_weights` ignores names: it walks the root `layer_names` attribute, skips layers
without weights, and takes each layer's `weight_names` in order (docs/spec-deform.md §4.1). HDF5's own group
iteration is alphabetical (`_10` before `_2`) and must never be used for this.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import h5py
import numpy as np

from ..errors import WeightsFileError
from ..models.synthmorph_deform.unet import conv_channels


@dataclass(frozen=True)
class KerasWeight:
    """One weight array of the file, in Keras order: its h5 path and shape (not yet read)."""

    name: str
    shape: tuple[int, ...]
    dataset: h5py.Dataset


def _decode(names) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in np.atleast_1d(names)]


@contextlib.contextmanager
def open_keras_weights(path: str | os.PathLike) -> Iterator[list[KerasWeight]]:
    """Open a Keras h5 weights file and list its arrays in loading order (lazily, nothing read).

    Accepts `save_weights` files (root `layer_names`) and whole-model files (`model_weights`
    group), with one nested-model group, flat layers, or both.
    Raises `WeightsFileError` naming the file if it is not such a file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsFileError(path, "no such file")
    try:
        handle = h5py.File(path, "r")
    except OSError as e:
        reason = "truncated or corrupt HDF5 file" if h5py.is_hdf5(path) else "not an HDF5 file"
        raise WeightsFileError(path, f"{reason} ({e.__class__.__name__}); expected a Keras .h5 weights file") from None
    with handle:
        try:
            root = handle
            if "layer_names" not in root.attrs and "model_weights" in root:
                root = root["model_weights"]
            if "layer_names" not in root.attrs:
                raise WeightsFileError(
                    path,
                    "not a Keras weights file: expected a 'layer_names' attribute at the root or in "
                    f"'model_weights', found groups {sorted(handle.keys())[:8]}",
                )
            weights = []
            for layer in _decode(root.attrs["layer_names"]):
                if layer not in root:
                    raise WeightsFileError(path, f"layer_names lists '{layer}' but the file has no such group")
                group = root[layer]
                for wname in _decode(group.attrs.get("weight_names", [])):
                    if wname not in group:
                        raise WeightsFileError(path, f"layer '{layer}' lists weight '{wname}' that is missing")
                    ds = group[wname]
                    if not isinstance(ds, h5py.Dataset):
                        raise WeightsFileError(path, f"'{layer}/{wname}' is not an array")
                    weights.append(KerasWeight(f"{layer}/{wname}", tuple(int(s) for s in ds.shape), ds))
        except WeightsFileError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
            # Damaged metadata surfaces as any of these from h5py (undecodable names included).
            raise WeightsFileError(path, f"truncated or corrupt HDF5 file ({e.__class__.__name__}: {e})") from None
        if not weights:
            raise WeightsFileError(path, "the file holds no weight arrays")
        yield weights


def infer_synthmorph_kwargs(path: str, shapes: Sequence[tuple[int, ...]]) -> dict:
    """The `SynthMorphDeform` constructor arguments implied by the weight shapes (docs/spec-deform.md §4.2).

    The file holds `nd` Dense (kernel, bias) pairs, then 4 arrays per hyper-convolution. Every
    `nd` is tried; exactly one must give a valid SynthMorph U-Net. Raises `WeightsFileError`
    saying what was expected and what was found.
    """
    shapes = [tuple(int(d) for d in s) for s in shapes]
    reasons, found = [], []
    for nd in range(1, len(shapes) // 2 + 1):
        try:
            found.append(_parse_layout(shapes, nd))
        except ValueError as e:
            reasons.append(str(e))
    if len(found) == 1:
        return found[0]
    if not found:
        # The most informative reason is the one that got furthest: one Dense-count guess per line.
        reason = reasons[0] if reasons else f"only {len(shapes)} arrays"
        raise WeightsFileError(path, f"not a SynthMorph deformable model: {reason}")
    raise WeightsFileError(path, f"ambiguous layout: {len(found)} readings of the {len(shapes)} arrays fit")


def _parse_layout(shapes: list[tuple[int, ...]], nd: int) -> dict:
    dense = shapes[: 2 * nd]
    if len(dense[0]) != 2:
        raise ValueError(f"expected a Dense kernel (params, units) first, found shape {dense[0]}")
    params, units = dense[0]
    for k in range(nd):
        fin = params if k == 0 else units
        if dense[2 * k] != (fin, units) or dense[2 * k + 1] != (units,):
            raise ValueError(
                f"Dense layer {k}: expected ({fin}, {units}) and ({units},), "
                f"found {dense[2 * k]} and {dense[2 * k + 1]}"
            )
    rest = shapes[2 * nd :]
    if not rest or len(rest) % 4:
        raise ValueError(f"expected 4 arrays per hyper-convolution after {nd} Dense layers, found {len(rest)} arrays")
    pairs = []
    for layer, j in enumerate(range(0, len(rest), 4)):
        hk, hkb, hb, hbb = rest[j : j + 4]
        ok = len(hk) == 2 and len(hb) == 2 and hk[0] == units == hb[0] and hkb == hk[1:] and hbb == hb[1:]
        if not ok or hk[1] % (27 * hb[1]):
            raise ValueError(
                f"hyper-convolution {layer}: expected ({units}, 27*cin*cout), (27*cin*cout,), ({units}, cout), "
                f"(cout,), found {hk}, {hkb}, {hb}, {hbb}"
            )
        pairs.append((hk[1] // (27 * hb[1]), hb[1]))
    outs = [c for _, c in pairs]
    for n in range(1, (len(pairs) - 1) // 2 + 1):
        enc, dec, add = outs[:n], outs[n : 2 * n], outs[2 * n : -1]
        if conv_channels(enc, dec, add, outs[-1], pairs[0][0]) == pairs and pairs[0][0] % 2 == 0:
            return {
                "enc_nf": enc,
                "dec_nf": dec,
                "add_nf": add,
                "flow_nf": outs[-1],
                "nb_hyp_layers": nd,
                "nb_hyp_params": params,
                "nb_hyp_units": units,
                "src_feats": pairs[0][0] // 2,
                "trg_feats": pairs[0][0] // 2,
            }
    raise ValueError(
        f"the {len(pairs)} convolutions (cin, cout) = {pairs} fit no U-Net of encoder, decoder with skips, "
        "add-convs and flow"
    )


def read_array(path: str, weight: KerasWeight, rows: slice | None = None) -> np.ndarray:
    """Read one weight (or a block of its first-axis rows) as float32, with a clear error if damaged."""
    try:
        data = weight.dataset[rows] if rows is not None else weight.dataset[()]
    except (OSError, RuntimeError, ValueError, TypeError, KeyError) as e:
        # h5py reports damaged data and damaged type metadata (TypeError) alike
        raise WeightsFileError(
            path, f"cannot read '{weight.name}': truncated or corrupt ({e.__class__.__name__}: {e})"
        ) from None
    data = np.asarray(data, dtype=np.float32)
    if not np.isfinite(data).all():
        raise WeightsFileError(path, f"'{weight.name}' holds NaN or Inf values")
    return data


def load_keras_h5(path: str | os.PathLike, expected_sha256: str | None = None, *, verify: bool = True):
    """The SynthMorph model of a Keras h5 file, read in memory (no bundle written).

    The layout decides the architecture: a Dense kernel first is the deformable hypernetwork
    (`SynthMorphDeform`), a convolution kernel first the affine/rigid detector
    (`SynthMorphAffine`, rigid when the release or file name says so). With `verify`, a known
    FreeSurfer release, or any file given `expected_sha256`, is checked by digest first.
    """
    import jax.numpy as jnp

    from ..models.params import fill_parameters, template
    from .releases import verify_release

    path = os.fspath(path)
    with open_keras_weights(path) as weights:
        cls, kwargs = infer_architecture(path, [w.shape for w in weights])
        if verify:
            verify_release(path, expected_sha256)
        arrays = [jnp.asarray(read_array(path, w)) for w in weights]
    return fill_parameters(template(cls, kwargs), arrays)


def infer_architecture(path: str, shapes: Sequence[tuple[int, ...]]) -> tuple[type, dict]:
    """(model class, constructor arguments) of a SynthMorph Keras weights file, from its shapes."""
    from ..models.synthmorph_affine.model import SynthMorphAffine
    from ..models.synthmorph_deform.model import SynthMorphDeform
    from .affine_layout import infer_affine_kwargs, is_rigid_file, looks_like_affine
    from .releases import release_name

    if looks_like_affine(shapes):
        return SynthMorphAffine, infer_affine_kwargs(path, shapes, rigid=is_rigid_file(path, release_name(path)))
    return SynthMorphDeform, infer_synthmorph_kwargs(path, shapes)


def write_keras_weights(
    path: str | os.PathLike,
    arrays,
    *,
    layout: str = "nested",
    layer_suffixes: Sequence[int] | None = None,
) -> None:
    """Write weights in the Keras-2 h5 layout of `synthmorph.deform.3.h5` (for tests and benchmarks).

    `arrays` is an iterable of (shape, fill) where `fill(dataset)` writes the values, or of
    numpy arrays, in Keras order: Dense kernel/bias pairs, then 4 arrays per hyper-convolution.
    `layout` is "nested" (one model group holding all layers, as `save_weights` writes a model
    with a nested sub-model), "flat" (one group per layer) or "model_weights" (a whole-model
    file). `layer_suffixes` sets the Keras name suffix of each conv layer (default 0, 1, 2, ...).
    The file is written atomically: whole, or not at all (an existing file is then left as it was).
    """
    items = [(a.shape, None, a) if isinstance(a, np.ndarray) else (a[0], a[1], None) for a in arrays]
    n = len(items)
    n_conv = 0
    layers = []
    shapes = [tuple(s) for s, _, _ in items]
    kwargs = infer_synthmorph_kwargs(os.fspath(path), shapes)
    nd = kwargs["nb_hyp_layers"]
    for k in range(nd):
        layers.append(("dense" if k == 0 else f"dense_{k}", ["kernel:0", "bias:0"], items[2 * k : 2 * k + 2]))
    i = 2 * nd
    suffixes = list(layer_suffixes) if layer_suffixes is not None else list(range((n - i) // 4))
    while i < n:
        s = suffixes[n_conv]
        name = "hyper_conv_from_dense" if s == 0 else f"hyper_conv_from_dense_{s}"
        wn = ["hyperkernel_kernel:0", "hyperkernel_bias:0", "hyperbias_kernel:0", "hyperbias_bias:0"]
        layers.append((name, wn, items[i : i + 4]))
        i, n_conv = i + 4, n_conv + 1
    from .._atomic import atomic_file

    # Beside the target, renamed into place when complete: a failure leaves an existing file as it was.
    with atomic_file(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        root = f.create_group("model_weights") if layout == "model_weights" else f
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.13.1"
        if layout == "flat":
            root.attrs["layer_names"] = np.array([name.encode() for name, _, _ in layers])
            groups = [(root.create_group(name), [f"{name}/{w}" for w in wn], its) for name, wn, its in layers]
        else:
            root.attrs["layer_names"] = np.array([b"input_1", b"model_3", b"vec_int"])
            root.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
            root.create_group("vec_int").attrs["weight_names"] = np.array([], dtype="S1")
            model = root.create_group("model_3")
            model.attrs["weight_names"] = np.array([f"{name}/{w}".encode() for name, wn, _ in layers for w in wn])
            groups = [(model, [f"{name}/{w}" for w in wn], its) for name, wn, its in layers]
        for group, names, its in groups:
            if layout == "flat":
                group.attrs["weight_names"] = np.array([nm.encode() for nm in names])
            for nm, (shape, fill, arr) in zip(names, its, strict=False):
                if arr is not None:
                    group.create_dataset(nm, data=arr.astype(np.float32))
                else:
                    fill(group.create_dataset(nm, shape=shape, dtype="f4"))
