"""Conversion of FreeSurfer's Keras weights into ilex bundles."""

from .keras_h5 import infer_synthmorph_kwargs as infer_synthmorph_kwargs
from .keras_h5 import load_keras_h5 as load_keras_h5
from .keras_h5 import open_keras_weights as open_keras_weights
from .to_bundle import convert as convert
