"""ilex: SynthMorph deformable brain-MRI registration (FreeSurfer's mri_synthmorph) in JAX."""

__version__ = "0.1.0"

from .bundle import DEFAULT_REPO_ID as DEFAULT_REPO_ID
from .bundle import load as load
from .bundle import save as save
from .convert import convert as convert
from .models.synthmorph_deform import SynthMorphDeform as SynthMorphDeform
from .models.synthmorph_deform import SynthMorphUNet as SynthMorphUNet
from .models.synthmorph_deform import symmetric_velocity as symmetric_velocity
from .registration.outputs import write_outputs as write_outputs
from .registration.session import Registrar as Registrar
from .template import build_template as build_template
