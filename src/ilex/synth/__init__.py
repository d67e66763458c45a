"""SynthMorph's training-data synthesis in JAX: label maps (given or made from noise), random
diffeomorphic deformations and random-contrast images, each a pure function of a `jax.random` key.

Every function is jittable (settings and shapes static) and vmappable over keys; the same key gives
the same output bit for bit. docs/train.md (Synthesis) gives the recipe and the source of every number.

- `SynthSettings`: the recipe's numbers (defaults: voxelmorph's brains recipe; `.shapes()` for shapes)
- `shapes_labels`: a label map from noise
- `random_displacement`: a random smooth diffeomorphic displacement
- `warp_labels`, `one_hot`: label maps moved (nearest) and one-hot encoded
- `labels_to_image`: a random image of a label map
- `synth_pair`, `shapes_pair`, `random_flip`: a training pair (two images, two label maps)
- `load_label_maps`: label maps from a folder or CSV of NIfTI/MGZ files, relabelled 0..K-1
"""

from .deform import random_displacement as random_displacement
from .image import labels_to_image as labels_to_image
from .label_maps import load_label_maps as load_label_maps
from .labels import one_hot as one_hot
from .labels import warp_labels as warp_labels
from .noise import perlin_noise as perlin_noise
from .pair import random_flip as random_flip
from .pair import shapes_pair as shapes_pair
from .pair import synth_pair as synth_pair
from .settings import SynthSettings as SynthSettings
from .shapes import shapes_labels as shapes_labels

__all__ = [
    "SynthSettings",
    "labels_to_image",
    "load_label_maps",
    "one_hot",
    "perlin_noise",
    "random_displacement",
    "random_flip",
    "shapes_labels",
    "shapes_pair",
    "synth_pair",
    "warp_labels",
]
