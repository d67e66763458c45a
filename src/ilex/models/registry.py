"""The architectures a bundle may name. Nothing outside this table is ever imported.

A `config.json` downloaded from a hub is untrusted: resolving its `architecture` string with
importlib would let it run arbitrary code, so the string is only looked up here.
"""

from __future__ import annotations

from .synthmorph_affine.model import SynthMorphAffine
from .synthmorph_deform.model import SynthMorphDeform
from .synthmorph_deform.unet import SynthMorphUNet

ARCHITECTURES: dict[str, type] = {
    "ilex.models.synthmorph_deform.model.SynthMorphDeform": SynthMorphDeform,
    "ilex.models.synthmorph_deform.model.SynthMorphUNet": SynthMorphUNet,
    "ilex.models.synthmorph_affine.model.SynthMorphAffine": SynthMorphAffine,
}
# Shorter spellings seen in published bundles' commit messages; same classes.
ALIASES: dict[str, str] = {
    "ilex.models.synthmorph_deform.SynthMorphDeform": "ilex.models.synthmorph_deform.model.SynthMorphDeform",
    "ilex.models.synthmorph_deform.SynthMorphUNet": "ilex.models.synthmorph_deform.model.SynthMorphUNet",
}


def architecture_name(model_or_cls) -> str:
    """The registered dotted path of a model instance or class."""
    cls = model_or_cls if isinstance(model_or_cls, type) else type(model_or_cls)
    for name, registered in ARCHITECTURES.items():
        if registered is cls:
            return name
    raise TypeError(f"{cls.__name__} is not a registered ilex architecture; known: {sorted(ARCHITECTURES)}")


def resolve_architecture(name: str) -> type | None:
    """The class registered under `name`, or None. Never imports anything."""
    if not isinstance(name, str):
        return None
    return ARCHITECTURES.get(ALIASES.get(name, name))
