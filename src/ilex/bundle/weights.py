"""SynthMorph's weight files: which each model needs, where they are found, and loading them.

One loader for the command line, `ilex batch` and Python: the same defaults
($FREESURFER_HOME/models, else the hub bundle), the same check that each file holds the network its
role needs, and the same message when the weights are missing.
"""

from __future__ import annotations

import os

from ..errors import BundleError, OptionError, WeightsFileError, WeightsNotFound


def default_weights(file: str = "synthmorph.deform.3.h5") -> str:
    """FreeSurfer's own copy of a weight file when installed, else its hub bundle."""
    home = os.environ.get("FREESURFER_HOME")
    if home:
        candidate = os.path.join(home, "models", file)
        if os.path.isfile(candidate):
            return candidate
    return "ilex-hub/" + file.removesuffix(".h5")


def weight_paths(name: str, files: tuple[str, ...], given: list[str] | None) -> list[str]:
    """`given` checked against `files`, the weight files that `name` needs, or their defaults."""
    if not files and given:
        raise OptionError(f"{name} needs no weights; drop them (or pick a SynthMorph model and refine its result)")
    if not given:
        return [default_weights(f) for f in files]
    if len(given) != len(files):
        need = " then ".join(files)
        raise OptionError(
            f"{name} takes {len(files)} weight file{'s' if len(files) > 1 else ''} ({need}), got {len(given)}"
        )
    return list(given)


def peek_width(weights: str) -> int:
    """The widest layer of the network in `weights`, read from metadata only (256, the real
    models' width, when it cannot be known before downloading)."""
    import json

    try:
        if os.path.isdir(weights):
            with open(os.path.join(weights, "config.json"), encoding="utf-8") as f:
                kwargs = json.load(f)["_ilex"]["constructor_kwargs"]
        elif os.path.isfile(weights):
            from ..convert.keras_h5 import infer_architecture, open_keras_weights

            with open_keras_weights(weights) as arrays:
                kwargs = infer_architecture(weights, [a.shape for a in arrays])[1]
        else:
            return 256
        widths = [n for key in ("enc_nf", "dec_nf", "add_nf") for n in kwargs.get(key, [])]
        return max(widths) if widths else 256
    except Exception:  # noqa: BLE001  the loader names the problem properly a moment later
        return 256


def load_networks(method, weights: list[str], explicit: bool, hyper: float):
    """The networks `method` (a `Method` or its class) runs, loaded from `weights` and checked to
    hold what its `weight_roles` say, file by file (one loader for the CLI, the batch and Python).

    The deformable hypernetwork is reduced to its U-Net for λ = `hyper` at once, so that its
    3.5 GB leave memory before the registration runs.
    """
    from ..models.synthmorph_affine import SynthMorphAffine
    from ..models.synthmorph_deform import SynthMorphDeform

    loaded = []
    roles = method.weight_roles
    for role, file, path in zip(roles, method.weight_files, weights, strict=False):
        net = load_weights_file(path, explicit)
        kind = "detector" if isinstance(net, SynthMorphAffine) else "deformable"
        if kind != role:
            words = {"detector": ("affine/rigid", "affine"), "deformable": ("deformable", "deformable")}
            order = f"; {method.name} takes the affine weights first" if len(roles) > 1 else ""
            raise WeightsFileError(
                path,
                f"holds SynthMorph's {words[kind][0]} network, but {method.name} needs the "
                f"{words[role][1]} one here ({file}){order}",
            )
        if isinstance(net, SynthMorphDeform):
            net = net.at_hyper(hyper)
        loaded.append(net)
    return tuple(loaded) if len(roles) > 1 else loaded[0]


def load_weights_file(weights: str, explicit: bool):
    """The model in one weights file, bundle or hub id. `explicit` (the user named it) re-raises a
    loading error as it is; a default that is missing gets the message saying how to get it."""
    from . import load

    try:
        return load(weights)
    except BundleError as e:
        if explicit:
            raise
        name = weights.rsplit("/", 1)[-1] + ".h5"
        raise BundleError(
            weights,
            f"the SynthMorph weights are not available here. Get {name} with FreeSurfer 7.4+ "
            "(it is in $FREESURFER_HOME/models) and pass it with -w, or convert it once with "
            f"`ilex convert {name} DIR` and pass -w DIR, or download the hub bundle "
            f"where there is a network (`hf download {weights}`); or register without trained weights: "
            "`ilex register -m optimize MOVING FIXED ...`"
            + ("" if isinstance(e, WeightsNotFound) else f". Detail: {e.problem}"),
        ) from None


def load_weights(weights=None):
    """The model `weights` names (see `Registrar.from_weights`); a list gives a tuple of models,
    an empty one None (no model: `-m optimize`); None gives `ilex register`'s default, joint's
    (affine, deformable) pair."""
    if weights is None:
        from ..registration.methods import DEFAULT_METHOD, method_class

        files = method_class(DEFAULT_METHOD).weight_files
        return tuple(load_weights_file(default_weights(file), explicit=False) for file in files)
    if isinstance(weights, (list, tuple)):
        if not weights:  # a method that needs no weights (-m optimize)
            return None
        return tuple(load_weights(w) for w in weights) if len(weights) != 1 else load_weights(weights[0])
    return load_weights_file(os.fspath(weights), explicit=True)
