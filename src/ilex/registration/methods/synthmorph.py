"""SynthMorph's networks as registration methods: `deform`, `affine`, `rigid` and `joint`.

Network spaces, matrices and the joint mid-space follow FreeSurfer's `mri_synthmorph`
(docs/spec-affine.md; docs/spec-deform.md §2, §10): only `deform` centres both images on the fixed one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..._programs import program
from ...transforms.compose import affine_displacement
from ...transforms.integrate import voxel_grid
from ...transforms.interpolate import interpolate_clamped
from .base import Method, NetworkTransform, scale_matrix

# The models (equinox, a fifth of a second to import) are imported inside the functions that run
# them, so that importing this module (every registration does, -m optimize's too) does not load them.


def default_algorithm() -> str:
    """The U-Net's convolution when none is asked for: Winograd F(4,3) on CPU (8x fewer
    multiplications on the wide layers; the output within 1.3e-5 of the direct float32 evaluation,
    measured by bench/register_speed.py --what accuracy); on GPUs the vendor's convolutions are
    already fast, so XLA's direct convolution."""
    return "winograd4" if jax.default_backend() == "cpu" else "direct"


def default_detector_algorithm() -> str:
    """The affine detector's convolution when none is asked for: Winograd F(2,3) on CPU, XLA's on
    GPUs. Not F(4,3) as for the U-Net: the least-squares fit amplifies the features' rounding, and
    with F(4,3) the TensorFlow fixtures' pipelines fell outside their bounds (a matrix 3.7e-5 of
    its size off, against 2e-5; moved intensities 0.030 off, against 0.02), where F(2,3) stays
    inside them as XLA's convolution does, and already removes 3.4x of the detector's
    multiplications and all of its full-resolution activations."""
    return "winograd" if jax.default_backend() == "cpu" else "direct"


@program(static_argnames=("algorithm",))
def _deform_velocity(unet, mov_net, fix_net, algorithm: str):
    from ...models.synthmorph_deform.velocity import half_resolution, symmetric_velocity

    return symmetric_velocity(
        unet, half_resolution(mov_net[..., None]), half_resolution(fix_net[..., None]), algorithm=algorithm
    )


def _unet(model, hyper: float, what: str):
    from ...models.synthmorph_deform import SynthMorphDeform, SynthMorphUNet

    if isinstance(model, SynthMorphDeform):
        model = model.at_hyper(hyper)
    if not isinstance(model, SynthMorphUNet):
        raise TypeError(f"{what} needs a SynthMorph deformable model, got {type(model).__name__}")
    return model


def _detector(model, what: str):
    from ...models.synthmorph_affine import SynthMorphAffine

    if not isinstance(model, SynthMorphAffine):
        raise TypeError(f"{what} needs a SynthMorph affine or rigid model, got {type(model).__name__}")
    return model


def _no_options(name: str, options: dict) -> None:
    if options:
        raise TypeError(
            f"-m {name} takes no optimiser options ({', '.join(options)}); they are for method='optimize' or 'refine'"
        )


@dataclass(frozen=True)
class SynthMorphDeformMethod(Method):
    """`mri_synthmorph -m deform`: both images centred on the fixed one, the U-Net's symmetric
    velocity at half resolution (docs/spec-deform.md §2). `unet` is the U-Net generated for one λ."""

    unet: object
    algorithm: str | None = None
    name: ClassVar[str] = "deform"
    summary: ClassVar[str] = "SynthMorph's deformable model (images already affinely aligned)"
    weight_files: ClassVar[tuple[str, ...]] = ("synthmorph.deform.3.h5",)
    weight_roles: ClassVar[tuple[str, ...]] = ("deformable",)
    refinable: ClassVar[bool] = True
    centre_on_fixed: ClassVar[bool] = True
    prior_affine: ClassVar[str] = "affine"  # SynthMorph's detector, as joint runs it

    @classmethod
    def create(cls, model=None, *, hyper: float, steps: int, algorithm: str | None = None, **options):
        """From a deformable model, or the second of an (affine, deformable) pair."""
        _no_options(cls.name, options)
        pair = isinstance(model, (tuple, list)) and len(model) == 2
        return cls(_unet(model[1] if pair else model, hyper, "-m deform"), algorithm)

    @property
    def hyper(self) -> float:
        return self.unet.hyper

    def networks(self) -> tuple:
        return (self.unet,)

    def describe(self, extent: int, steps: int, grid=None) -> str:
        return f"2 passes at {extent // 2}^3, {steps} squaring steps"

    def estimate(self, mov_net: jax.Array, fix_net: jax.Array, grid=None) -> NetworkTransform:
        v = _deform_velocity(
            self.unet, jnp.asarray(mov_net), jnp.asarray(fix_net), algorithm=self.algorithm or default_algorithm()
        )
        return NetworkTransform(velocity=v, scale=2)


@dataclass(frozen=True)
class SynthMorphAffineMethod(Method):
    """`mri_synthmorph -m affine`: each image centred on itself; the detector sees the
    half-resolution inputs and fits a matrix in full-resolution network coordinates."""

    model: object
    algorithm: str | None = None
    rigid: ClassVar[bool] = False
    name: ClassVar[str] = "affine"
    summary: ClassVar[str] = "SynthMorph's affine feature detector"
    yields_matrix: ClassVar[bool] = True
    weight_files: ClassVar[tuple[str, ...]] = ("synthmorph.affine.2.h5",)
    weight_roles: ClassVar[tuple[str, ...]] = ("detector",)
    runs_detector: ClassVar[bool] = True
    refinable: ClassVar[bool] = True

    @classmethod
    def create(cls, model=None, *, hyper: float, steps: int, algorithm: str | None = None, **options):
        """From a detector, or the first of an (affine, deformable) pair."""
        _no_options(cls.name, options)
        pair = isinstance(model, (tuple, list)) and len(model) == 2
        return cls(_detector(model[0] if pair else model, f"-m {cls.name}"), algorithm)

    def networks(self) -> tuple:
        return (self.model,)

    def describe(self, extent: int, steps: int, grid=None) -> str:
        return f"{self.name} feature detector at {extent // 2}^3"

    def estimate(self, mov_net: jax.Array, fix_net: jax.Array, grid=None) -> NetworkTransform:
        from ...models.synthmorph_deform.velocity import half_resolution

        extent = mov_net.shape[0]
        half = [half_resolution(jnp.asarray(x)[..., None]) for x in (mov_net, fix_net)]
        matrix = self.model.fit(
            *half, extent, rigid=self.rigid, algorithm=self.algorithm or default_detector_algorithm()
        )
        return NetworkTransform(matrix=matrix)


@dataclass(frozen=True)
class SynthMorphRigidMethod(SynthMorphAffineMethod):
    """`mri_synthmorph -m rigid`: the affine method's fit with rotation and translation only,
    from the rigid model's detector."""

    rigid: ClassVar[bool] = True
    name: ClassVar[str] = "rigid"
    summary: ClassVar[str] = "SynthMorph's rigid feature detector"
    weight_files: ClassVar[tuple[str, ...]] = ("synthmorph.rigid.1.h5",)


def matrix_sqrt(m: np.ndarray) -> np.ndarray:
    """The principal square root of an affine 4x4 matrix (real; the mid-space of `joint`)."""
    import scipy.linalg  # here: its import is a tenth of a second every process would pay

    root = scipy.linalg.sqrtm(np.asarray(m, np.float64))
    if not np.isfinite(root).all() or np.abs(np.imag(root)).max() > 1e-6 * np.abs(root).max():
        raise ValueError("the affine has no real square root (a reflection or a rotation of 180°)")
    return np.real(root)


@program
def _resample_half(volume, matrix):
    # VoxelMorph's SpatialTransformer with a matrix: trilinear, zero fill, on the half grid.
    half = tuple(n // 2 for n in volume.shape)
    grid = voxel_grid(half)
    return interpolate_clamped(volume, grid + affine_displacement(matrix, grid), fill=0.0)


@program(static_argnames=("algorithm",))
def _joint_velocity(unet, mov_net, fix_net, to_mov, to_fix, algorithm: str):
    from ...models.synthmorph_deform.velocity import symmetric_velocity

    mov_half = _resample_half(mov_net, to_mov)[..., None]
    fix_half = _resample_half(fix_net, to_fix)[..., None]
    return symmetric_velocity(unet, mov_half, fix_half, algorithm=algorithm), mov_half, fix_half


@dataclass(frozen=True)
class SynthMorphJointMethod(Method):
    """`mri_synthmorph -m joint` (its default): affine, then deformable in the affine mid-space.

    The detector runs on the half-resolution inputs as if they were the whole images (so its
    centre is half a voxel off `-m affine`'s, as in the reference); the square root of its
    matrix takes each image half way; the U-Net's velocity lives in that mid-space, and the
    total map is `sqrt(A) exp(v) sqrt(A)` (docs/spec-deform.md §2.11).
    """

    affine: object
    unet: object
    algorithm: str | None = None
    name: ClassVar[str] = "joint"
    summary: ClassVar[str] = "SynthMorph's affine, then its deformable model in the affine mid-space"
    weight_files: ClassVar[tuple[str, ...]] = ("synthmorph.affine.2.h5", "synthmorph.deform.3.h5")
    weight_roles: ClassVar[tuple[str, ...]] = ("detector", "deformable")
    runs_detector: ClassVar[bool] = True

    @classmethod
    def create(cls, model=None, *, hyper: float, steps: int, algorithm: str | None = None, **options):
        """From an (affine detector, deformable model) pair."""
        _no_options(cls.name, options)
        if not isinstance(model, (tuple, list)) or len(model) != 2:
            raise TypeError("-m joint needs a pair of models: (affine detector, deformable model)")
        return cls(
            _detector(model[0], "-m joint (first model)"), _unet(model[1], hyper, "-m joint (second model)"), algorithm
        )

    @property
    def hyper(self) -> float:
        return self.unet.hyper

    def networks(self) -> tuple:
        return (self.affine, self.unet)

    def describe(self, extent: int, steps: int, grid=None) -> str:
        return f"affine, then 2 passes at {extent // 2}^3 in mid-space, {steps} squaring steps"

    def mid_space(self, mov_net: jax.Array, fix_net: jax.Array) -> tuple[np.ndarray, np.ndarray]:
        """Half-resolution index matrices from the mid-space to the moving and the fixed image."""
        from ...models.synthmorph_affine.fit import centring
        from ...models.synthmorph_deform.velocity import half_resolution

        half = mov_net.shape[0] // 2
        ima = [half_resolution(jnp.asarray(x)[..., None]) for x in (mov_net, fix_net)]
        algorithm = self.algorithm or default_detector_algorithm()
        centred = self.affine.centred_fit(*ima, half, rigid=False, algorithm=algorithm)
        cen, un_cen = centring(half)
        to_mov = un_cen @ matrix_sqrt(centred) @ cen
        to_fix = un_cen @ matrix_sqrt(np.linalg.inv(centred)) @ cen
        return to_mov, to_fix

    def estimate(self, mov_net: jax.Array, fix_net: jax.Array, grid=None) -> NetworkTransform:
        to_mov, to_fix = self.mid_space(mov_net, fix_net)
        s = scale_matrix(2)
        v, _, _ = _joint_velocity(
            self.unet,
            jnp.asarray(mov_net),
            jnp.asarray(fix_net),
            np.float32(s @ to_mov),
            np.float32(s @ to_fix),
            algorithm=self.algorithm or default_algorithm(),
        )
        return NetworkTransform(
            velocity=v, scale=2, pre=to_mov, post=s @ to_mov, inverse_pre=to_fix, inverse_post=s @ to_fix
        )
