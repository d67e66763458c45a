"""SynthMorph's deformable model (`synthmorph.deform.3`)."""

from .model import SynthMorphDeform as SynthMorphDeform
from .unet import SynthMorphUNet as SynthMorphUNet
from .velocity import symmetric_velocity as symmetric_velocity
