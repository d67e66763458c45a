"""SynthMorph's affine/rigid feature detector and the fits that turn its features into a matrix."""

from .fit import barycenter as barycenter
from .fit import channel_weights as channel_weights
from .fit import fit_affine as fit_affine
from .fit import rigid_part as rigid_part
from .fit import symmetric_fit as symmetric_fit
from .model import SynthMorphAffine as SynthMorphAffine
from .model import fit_features as fit_features
