"""The whole deformable registration, as `mri_synthmorph register -m deform` runs it.

moving, fixed -> network space (both centred on the fixed image) -> half resolution -> two
symmetric U-Net passes -> scaling and squaring of ±v -> full resolution by composition ->
each image's native voxel grid -> RAS displacement warps in mm and the moved images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ImageFileError, OptionError
from ..image.io import Image, load_image
from ..models.synthmorph_deform.velocity import half_resolution, symmetric_velocity
from ..progress import Stages
from ..transforms.compose import apply_matrix, compose_native, upsample_half_field
from ..transforms.grid import voxel_grid
from ..transforms.integrate import scaling_and_squaring
from ..transforms.interpolate import sample_image
from .network_space import NetworkSpace, network_space, to_network
from .overlap import check_overlap


@dataclass
class Registration:
    """What a registration produced. Arrays are numpy; nothing is written until asked.

    `forward` is the warp on the fixed grid: RAS displacement (mm), fixed voxel p samples the
    moving image at world `A_fix p + forward[p]`. `inverse` is the same on the moving grid.
    `forward_vox`/`inverse_vox` are the same warps as voxel displacements (`disp_crs`).
    """

    moving: Image
    fixed: Image
    space: NetworkSpace
    forward: np.ndarray
    inverse: np.ndarray
    forward_vox: np.ndarray
    inverse_vox: np.ndarray
    inputs: tuple[np.ndarray, np.ndarray]
    times: dict[str, float] = field(default_factory=dict)

    def moved(self, method: str = "linear", fill: float = 0.0) -> np.ndarray:
        """The moving image on the fixed grid (`-o`)."""
        return _resample(self.moving.data, self.forward_vox, method, fill)

    def fixed_moved(self, method: str = "linear", fill: float = 0.0) -> np.ndarray:
        """The fixed image on the moving grid (`-O`)."""
        return _resample(self.fixed.data, self.inverse_vox, method, fill)


def _resample(data, disp_vox, method, fill):
    fn = jax.jit(lambda d, u: sample_image(d, voxel_grid(u.shape[:3]) + u, method, fill))
    return np.asarray(fn(jnp.asarray(data, jnp.float32), jnp.asarray(disp_vox)))


def check_options(hyper: float, steps: int, extent: int) -> None:
    if not 0.0 <= hyper <= 1.0:
        raise OptionError(f"-r {hyper:g}: the regularisation weight λ must lie in [0, 1]")
    if steps < 1:
        raise OptionError(f"-n {steps}: integration needs at least 1 step (mri_synthmorph uses 7)")
    if extent < 32 or extent % 32:
        raise OptionError(f"-e {extent}: the extent must be a positive multiple of 32 (256 default, 192 to save memory)")


def default_algorithm() -> str:
    """Winograd F(4,3) on CPU (8x fewer multiplications on the wide layers; the network's output
    within 1.3e-5 of the direct float32 evaluation, measured by bench/register_speed.py --what
    accuracy); on GPUs the vendor's convolutions are already fast, so XLA's direct convolution."""
    return "winograd4" if jax.default_backend() == "cpu" else "direct"


@jax.jit(static_argnames=("steps", "algorithm", "batched"))
def _network_fields(unet, mov_net, fix_net, steps: int, algorithm: str = "direct", batched: bool = False):
    v = symmetric_velocity(unet, half_resolution(mov_net[..., None]), half_resolution(fix_net[..., None]),
                           algorithm=algorithm, batched=batched)
    fw = upsample_half_field(scaling_and_squaring(v, steps))
    bw = upsample_half_field(scaling_and_squaring(-v, steps))
    return fw, bw


def _ras_displacement(disp_vox, source_affine, target_affine):
    # disp = A_src (p + d) - A_trg p, in float32 as surfa's conversion does.
    grid = voxel_grid(disp_vox.shape[:3])
    return apply_matrix(source_affine, grid + disp_vox) - apply_matrix(
        target_affine, grid
    )


_native = jax.jit(compose_native, static_argnames=("target_shape",))
_to_ras = jax.jit(_ras_displacement)


def register(
    moving: Image | str | os.PathLike,
    fixed: Image | str | os.PathLike,
    model,
    *,
    hyper: float = 0.5,
    steps: int = 7,
    extent: int = 256,
    init_vox: np.ndarray | None = None,
    clip_percentile: float | None = None,
    stages: Stages | None = None,
    algorithm: str | None = None,
) -> Registration:
    """Register `moving` to `fixed` with a SynthMorph model (hypernetwork or fixed-λ U-Net).

    `init_vox` is an initial affine from moving to fixed voxels (see `ilex.registration.affine`).
    `clip_percentile` enables the model card's percentile clipping (not FreeSurfer's behaviour).
    `algorithm` ("direct", "winograd" or "winograd4", see `unet_forward`) picks the convolution;
    by default Winograd F(2,3) on CPU.
    Raises `ImageFileError` for unusable images and `OptionError` for out-of-range options.
    """
    check_options(hyper, steps, extent)
    stages = stages or Stages()
    with stages("resample", f"to {extent}^3 network space"):
        moving = moving if isinstance(moving, Image) else load_image(moving, what="moving image")
        fixed = fixed if isinstance(fixed, Image) else load_image(fixed, what="fixed image")
        space = network_space(moving, fixed, extent, init_vox)
        check_overlap(moving, fixed, space.net_to_fix @ space.mov_to_net)
        mov_net = to_network(moving, space.net_to_mov, extent, clip_percentile)
        fix_net = to_network(fixed, space.net_to_fix, extent, clip_percentile)
        _check_contrast(moving, fixed, mov_net, fix_net)
    with stages("network", f"2 passes at {extent // 2}^3, {steps} squaring steps"):
        unet = model.at_hyper(hyper)
        fw, bw = _network_fields(unet, mov_net, fix_net, steps, algorithm or default_algorithm())
        fw.block_until_ready()
    with stages("compose", "warps in native space"):
        fw_vox = _native(fw, space.fix_to_net, space.net_to_mov, tuple(fixed.shape))
        bw_vox = _native(bw, space.mov_to_net, space.net_to_fix, tuple(moving.shape))
        forward = _to_ras(fw_vox, moving.affine.astype(np.float32), fixed.affine.astype(np.float32))
        inverse = _to_ras(bw_vox, fixed.affine.astype(np.float32), moving.affine.astype(np.float32))
        forward.block_until_ready()
    return Registration(
        moving, fixed, space, np.asarray(forward), np.asarray(inverse), np.asarray(fw_vox), np.asarray(bw_vox),
        (np.asarray(mov_net), np.asarray(fix_net)), stages.times,
    )


def _check_contrast(moving: Image, fixed: Image, mov_net, fix_net) -> None:
    # A flat network input normalises to 0/0 = NaN, which would flow through the whole network.
    for image, net, what in ((moving, mov_net, "moving"), (fixed, fix_net, "fixed")):
        if not np.isfinite(np.asarray(net)).all():
            raise ImageFileError(
                image.path or what,
                f"the {what} image is flat inside the network's {net.shape[0]} mm cube centred on the fixed image, "
                "so there is nothing to register; check that the images overlap, or pass an initial affine with -i",
            )
