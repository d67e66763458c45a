"""ilex: brain-MRI registration in JAX: FreeSurfer's SynthMorph models (mri_synthmorph's joint, deform, affine,
rigid) and an optimiser that needs no weights, with the transforms and losses they are built from.

The user-facing names are here; `ilex.transforms` and `ilex.losses` are the functional layer (docs/api.md).
"""

__version__ = "0.1.0"

from . import errors as errors
from . import losses as losses
from . import synth as synth
from . import transforms as transforms
from .bundle import DEFAULT_REPO_ID as DEFAULT_REPO_ID
from .bundle import load as load
from .bundle import save as save  # the same as save_bundle, the name that says what it saves
from .bundle import save_bundle as save_bundle
from .convert import convert as _convert
from .image.io import Image as Image
from .models.synthmorph_affine import SynthMorphAffine as SynthMorphAffine
from .models.synthmorph_deform import SynthMorphDeform as SynthMorphDeform
from .models.synthmorph_deform import SynthMorphUNet as SynthMorphUNet
from .models.synthmorph_deform import symmetric_velocity as symmetric_velocity
from .registration.apply import apply as apply
from .registration.methods import as_method as as_method
from .registration.methods.base import Method as Method
from .registration.methods.base import NetworkTransform as NetworkTransform
from .registration.outputs import write_outputs as write_outputs
from .registration.pipeline import Registration as Registration
from .registration.pipeline import register as register
from .registration.session import Registrar as Registrar
from .registration.settings import Settings as Settings
from .template import build_template as build_template
from .train import train as train  # the function; the subpackage stays importable as `ilex.train.*` modules

convert_weights = _convert  # a FreeSurfer .h5 into a bundle; `ilex.convert` stays the subpackage

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
