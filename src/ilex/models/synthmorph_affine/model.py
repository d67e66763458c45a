"""SynthMorph's affine and rigid network: a convolutional feature detector and a least-squares fit.

voxelmorph's `VxmAffineFeatureDetector` as FreeSurfer's `mri_synthmorph -m affine|rigid` builds it
(docs/spec-affine.md): the half-resolution image goes through `len(enc_nf)` levels of
3x3x3 convolution + LeakyReLU(0.2) + max-pooling, `len(add_nf)` further convolutions at the
coarsest level, and a ReLU convolution to `num_feat` feature maps. Each map's barycentre is a
point; the points of the two images, weighted by the maps' masses, give the affine by weighted
least squares, symmetrised (`fit.symmetric_fit`). Rigid keeps the fit's rotation and translation.
Parameters are in Keras' positional order (kernel, bias per convolution), so FreeSurfer's
`synthmorph.affine.2.h5` and `synthmorph.rigid.1.h5` map onto the leaves one to one.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..._custom_types import AnyArray
from ..._sequencing import after
from ..conv import check_algorithm, conv_layer, direct_conv3d
from .fit import barycenter, centring, channel_weights, rigid_part, symmetric_fit

__all__ = ["AffineConv3d", "SynthMorphAffine", "fit_features"]


class AffineConv3d(eqx.Module):
    """Keras `Conv3D(cout, 3, padding='same')`: kernel (3, 3, 3, cin, cout), bias (cout,)."""

    kernel: Float[AnyArray, "3 3 3 cin cout"]
    bias: Float[AnyArray, " cout"]

    def __init__(self, cin: int, cout: int, *, key: jax.Array):
        limit = np.sqrt(6.0 / (27 * (cin + cout)))  # Keras' Glorot uniform
        self.kernel = jax.random.uniform(key, (3, 3, 3, cin, cout), minval=-limit, maxval=limit)
        self.bias = jnp.zeros((cout,))

    def __call__(self, x: Float[AnyArray, "x y z cin"]) -> Float[AnyArray, "x y z cout"]:
        return direct_conv3d(x[None], self.kernel, self.bias)[0]


def _leaky_relu(x: AnyArray) -> Array:
    return jax.nn.leaky_relu(x, 0.2)


class SynthMorphAffine(eqx.Module):
    """The feature detector. `features(image)` maps an (X, Y, Z, num_chan) image to
    (X/2^L, Y/2^L, Z/2^L, num_feat) non-negative maps, L = len(enc_nf).

    `rigid` records which head the weights were trained for (`synthmorph.rigid.1.h5`: True);
    `registration.methods` uses it as the default for the matrix it fits.
    """

    convs: list[AffineConv3d]
    enc_nf: tuple[int, ...] = eqx.field(static=True)
    add_nf: tuple[int, ...] = eqx.field(static=True)
    num_feat: int = eqx.field(static=True)
    num_chan: int = eqx.field(static=True)
    rigid: bool = eqx.field(static=True)

    def __init__(
        self,
        enc_nf: Sequence[int] = (256,) * 4,
        add_nf: Sequence[int] = (256,) * 4,
        num_feat: int = 64,
        num_chan: int = 1,
        rigid: bool = False,
        *,
        key: jax.Array,
    ):
        self.enc_nf, self.add_nf = tuple(int(n) for n in enc_nf), tuple(int(n) for n in add_nf)
        self.num_feat, self.num_chan, self.rigid = int(num_feat), int(num_chan), bool(rigid)
        if not self.enc_nf:
            raise ValueError("enc_nf must name at least one encoder level")
        if min(self.enc_nf + self.add_nf + (self.num_feat, self.num_chan)) < 1:
            raise ValueError(
                f"channel counts must be positive: enc_nf={enc_nf}, add_nf={add_nf}, "
                f"num_feat={num_feat}, num_chan={num_chan}"
            )
        widths = (self.num_chan, *self.enc_nf, *self.add_nf, self.num_feat)
        keys = jax.random.split(key, len(widths) - 1)
        self.convs = [
            AffineConv3d(cin, cout, key=k) for cin, cout, k in zip(widths[:-1], widths[1:], keys, strict=False)
        ]

    def __check_init__(self):
        widths = (self.num_chan, *self.enc_nf, *self.add_nf, self.num_feat)
        if len(self.convs) != len(widths) - 1:
            raise ValueError(f"expected {len(widths) - 1} convolutions, got {len(self.convs)}")
        for k, (conv, cin, cout) in enumerate(zip(self.convs, widths[:-1], widths[1:], strict=False)):
            if conv.kernel.shape != (3, 3, 3, cin, cout) or conv.bias.shape != (cout,):
                raise ValueError(
                    f"convolution {k}: expected kernel (3, 3, 3, {cin}, {cout}) and bias ({cout},), "
                    f"got {conv.kernel.shape} and {conv.bias.shape}"
                )

    @property
    def constructor_kwargs(self) -> dict:
        return {
            "enc_nf": list(self.enc_nf),
            "add_nf": list(self.add_nf),
            "num_feat": self.num_feat,
            "num_chan": self.num_chan,
            "rigid": self.rigid,
        }

    @property
    def card(self) -> dict:
        """The model-card fields of a bundle's config.json that differ from the deformable model's."""
        kind = "rigid" if self.rigid else "affine"
        return {
            "description": (
                f"SynthMorph {kind} registration network (synthmorph.{'rigid.1' if self.rigid else 'affine.2'} "
                "layout) in JAX/Equinox: a convolutional feature detector whose feature maps' barycentres, fitted "
                f"by weighted least squares, give the {kind} transform between two images. Called on "
                "half-resolution network-space images (1 mm LIA, min-max normalised); ilex.register runs the "
                "full mri_synthmorph pipeline."
            ),
            "intended_use": f"{kind.capitalize()} registration of two 3-D brain MR images of any contrast.",
            "task": f"{kind.capitalize()} image-to-image registration by feature barycentres",
        }

    @property
    def levels(self) -> int:
        return len(self.enc_nf)

    def features(self, image: Float[AnyArray, "x y z c"], algorithm: str = "direct") -> Float[AnyArray, "fx fy fz f"]:
        """The feature maps of one image. `algorithm` is the convolution (models/conv): "direct"
        is XLA's own; "winograd" and "winograd4" run the wide layers by Winograd F(2,3) or F(4,3)
        and the first layer as one wide matrix product, in slabs, each encoder level max-pooled
        slab by slab so that its full-resolution output never exists (the same maps up to
        float32 rounding, with a fraction of the memory and arithmetic on CPU)."""
        check_algorithm(algorithm)
        if any(n % 2**self.levels for n in image.shape[:3]):
            raise ValueError(
                f"image shape {image.shape[:3]} must be divisible by 2^{self.levels} (one pooling per level)"
            )
        x = image[None]
        convs = iter(self.convs)
        for _ in self.enc_nf:
            conv = next(convs)
            x = conv_layer([(x, False)], conv.kernel, conv.bias, algorithm, _leaky_relu, pool=True)
        for _ in self.add_nf:
            conv = next(convs)
            x = conv_layer([(x, False)], conv.kernel, conv.bias, algorithm, _leaky_relu)
        conv = next(convs)
        return conv_layer([(x, False)], conv.kernel, conv.bias, algorithm, jax.nn.relu)[0]

    def fit(
        self,
        moving: Float[AnyArray, "x y z c"],
        fixed: Float[AnyArray, "x y z c"],
        extent: int,
        rigid: bool | None = None,
        algorithm: str = "direct",
    ) -> np.ndarray:
        """The matrix from fixed to moving index coordinates of a grid of side `extent` (float64 4x4).

        `moving`, `fixed`: the detector's inputs (what it sees; `extent` is the side of the grid
        whose coordinates the barycentres are scaled to). `rigid` None uses `self.rigid`;
        `algorithm` is `features`'.
        """
        check_algorithm(algorithm)
        f1, f2 = _features_pair(self, moving, fixed, algorithm)
        return fit_features(f1, f2, extent, self.rigid if rigid is None else rigid)

    def centred_fit(
        self, moving, fixed, extent: int, rigid: bool | None = None, algorithm: str = "direct"
    ) -> np.ndarray:
        """As `fit`, in coordinates centred on the grid's middle (the reference's own frame)."""
        cen, un_cen = centring(extent)
        return cen @ self.fit(moving, fixed, extent, rigid, algorithm) @ un_cen


@eqx.filter_jit
def _features_pair(model: SynthMorphAffine, moving, fixed, algorithm: str):
    # One image after the other, so that the second's layers do not overlap the first's peak.
    first = model.features(moving, algorithm)
    return first, model.features(after(fixed, first), algorithm)


def fit_features(features_moving, features_fixed, extent: int, rigid: bool = False) -> np.ndarray:
    """SynthMorph's head on any pair of feature maps: barycentres scaled to `extent`, channel
    weights, the symmetric weighted fit (rigid part only with `rigid`), as a 4x4 float64 matrix
    from fixed to moving index coordinates of a grid of side `extent`."""
    centred = np.asarray(_symmetric(features_moving, features_fixed, float(extent)), np.float64)
    if rigid:
        centred = rigid_part(centred)
    cen, un_cen = centring(extent)
    return un_cen @ centred @ cen


@jax.jit
def _symmetric(f1, f2, extent):
    weights = channel_weights(f1, f2)
    return symmetric_fit(barycenter(f1, extent), barycenter(f2, extent), weights)
