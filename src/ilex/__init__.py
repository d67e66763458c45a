"""ilex: brain-MRI registration in JAX: FreeSurfer's SynthMorph models (mri_synthmorph's joint, deform, affine,
rigid) and an optimiser that needs no weights, with the transforms and losses they are built from.

The user-facing names are here; `ilex.transforms` and `ilex.losses` are the functional layer (docs/api.md).
"""

__version__ = "0.1.0"

import sys
import types

from . import errors as errors
from . import losses as losses
from . import transforms as transforms
from .image.io import Image as Image
from .registration.apply import apply as apply
from .registration.methods import as_method as as_method
from .registration.methods.base import Method as Method
from .registration.methods.base import NetworkTransform as NetworkTransform
from .registration.outputs import write_outputs as write_outputs
from .registration.pipeline import Registration as Registration
from .registration.pipeline import register as register
from .registration.session import Registrar as Registrar
from .registration.settings import Settings as Settings

# Imported on first use (PEP 562): the networks' code (equinox), the weights' files (h5py), the
# templates, training and synthesis add half a second to every process, -m optimize's included,
# which needs none of them. `from ilex import load` and `ilex.load` work as before.
_LAZY = {
    "DEFAULT_REPO_ID": ("bundle", "DEFAULT_REPO_ID"),
    "load": ("bundle", "load"),
    "save": ("bundle", "save"),  # the same as save_bundle, the name that says what it saves
    "save_bundle": ("bundle", "save_bundle"),
    "convert_weights": ("convert", "convert"),  # a FreeSurfer .h5 into a bundle; `ilex.convert` stays the subpackage
    "SynthMorphAffine": ("models.synthmorph_affine", "SynthMorphAffine"),
    "SynthMorphDeform": ("models.synthmorph_deform", "SynthMorphDeform"),
    "SynthMorphUNet": ("models.synthmorph_deform", "SynthMorphUNet"),
    "symmetric_velocity": ("models.synthmorph_deform", "symmetric_velocity"),
    "build_template": ("template", "build_template"),
    "train": ("train", "train"),  # the function (served by `_Ilex.train` below); listed for dir() and __all__
    "synth": ("synth", None),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'ilex' has no attribute {name!r}")
    import importlib

    module, attribute = _LAZY[name]
    value = importlib.import_module(f".{module}", __name__)
    value = value if attribute is None else getattr(value, attribute)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Ilex(types.ModuleType):
    # `ilex.train` is the function, as when it was imported eagerly: importing a module of the
    # subpackage (`import ilex.train.settings`) makes the import system bind the subpackage to the
    # name `train` here, which this setter leaves aside (the subpackage stays in sys.modules).
    @property
    def train(self):
        from .train.run import train

        return train

    @train.setter
    def train(self, value) -> None:
        pass


sys.modules[__name__].__class__ = _Ilex


# The public API, as docs/api.md lists it by what each name is (tests/test_exports.py checks the three agree).
__all__ = [
    "DEFAULT_REPO_ID",
    "Image",
    "Method",
    "NetworkTransform",
    "Registrar",
    "Registration",
    "Settings",
    "SynthMorphAffine",
    "SynthMorphDeform",
    "SynthMorphUNet",
    "apply",
    "as_method",
    "build_template",
    "convert_weights",
    "errors",
    "load",
    "losses",
    "register",
    "save",
    "save_bundle",
    "symmetric_velocity",
    "synth",
    "train",
    "transforms",
    "write_outputs",
]
