"""ilex: SynthMorph deformable registration in JAX."""

__version__ = "0.1.0"
