"""The one registration pipeline that every method runs through.

moving, fixed -> network space (docs/spec-deform.md §5.1) -> the method's `NetworkTransform` (a matrix, or a
velocity field with the matrices around it) -> scaling and squaring of ±v -> full network
resolution by composition -> each image's native voxel grid -> RAS displacements in mm, world
matrices and moved images. Methods (`ilex.registration.methods`) only estimate; everything after
the estimate is here, once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np

from .._programs import program
from ..errors import ImageFileError, OptionError
from ..image.io import Image, load_image
from ..progress import Stages
from ..transforms.compose import (
    apply_matrix,
    coarse_total_displacement,
    compose_native,
    matrix_after_field,
    matrix_field,
    to_full_resolution,
)
from ..transforms.grid import voxel_grid
from ..transforms.integrate import scaling_and_squaring
from ..transforms.interpolate import sample_image
from .masks import check_mask_options, network_masks, read_mask
from .methods.base import Method, NetworkTransform, scale_matrix
from .methods.synthmorph import default_algorithm  # noqa: F401  (public since 0.1)
from .network_space import NetworkSpace, network_space, to_network
from .overlap import check_overlap
from .settings import Settings, check_options  # noqa: F401  (check_options: public since 0.1)
from .working_grid import antialiasing


@dataclass
class Registration:
    """What a registration produced. Arrays are numpy; nothing is written until asked.

    `forward` is the warp on the fixed grid: RAS displacement (mm), fixed voxel p samples the
    moving image at world `A_fix p + forward[p]`. `inverse` is the same on the moving grid.
    `forward_vox`/`inverse_vox` are the same warps as voxel displacements (`disp_crs`).
    `matrix_vox` (fixed voxel -> moving voxel) and `affine` (moving RAS -> fixed RAS, what an
    LTA stores) are the affine the method found: for matrix methods (affine, rigid) the whole
    answer, whose dense warps are computed from it only when asked for; for deformable ones the
    map with the velocity left out (joint's and -m optimize's affine stage; for deform, the
    initial affine `-i`, else the identity). `moved()`/`fixed_moved()` are nibabel images on
    their target grids; `transform.details` holds what the method found besides the map
    (-m optimize: the similarity it chose).
    """

    moving: Image
    fixed: Image
    space: NetworkSpace
    method: str
    transform: NetworkTransform
    inputs: tuple[np.ndarray, np.ndarray] | None  # the network inputs, kept only when asked (`-d`)
    times: dict[str, float] = field(default_factory=dict)
    # Deformable results: the forward and backward fields on the network grid, composed onto
    # the native grids only when `forward_vox`/`inverse_vox` is first asked for (a batch that
    # writes -o and -t never pays for the inverse). Each is dropped once composed.
    network_fields: dict[str, jax.Array] = field(default_factory=dict, repr=False)
    # Stage -> peak resident memory (GiB) at its end, filled as `times` is (`Stages.memory`).
    memory: dict[str, float] = field(default_factory=dict)
    # The cost-function masks used ({"fixed": Image, "moving": Image}, 0/1 on their own grids).
    masks: dict = field(default_factory=dict)

    @property
    def is_matrix(self) -> bool:
        return self.transform.is_matrix

    @cached_property
    def matrix_vox(self) -> np.ndarray:
        """Fixed voxel -> moving voxel (4x4, float64) of the affine found (see the class docstring)."""
        if self.is_matrix:
            matrix = self.transform.matrix
        else:  # x -> post @ exp(v)(pre @ x / scale) with v = 0
            pre, post = self.transform.forward_sides()
            matrix = post @ (np.eye(4) if pre is None else pre) @ np.linalg.inv(scale_matrix(self.transform.scale))
        return self.space.net_to_mov @ matrix @ self.space.fix_to_net

    @cached_property
    def affine(self) -> np.ndarray:
        """Moving RAS -> fixed RAS (4x4) of the affine found: the world-space matrix an LTA stores (`-t`)."""
        return self.fixed.affine @ np.linalg.inv(self.matrix_vox) @ np.linalg.inv(self.moving.affine)

    @cached_property
    def forward_vox(self) -> np.ndarray:
        if self.is_matrix:
            return np.asarray(matrix_field(self.matrix_vox, self.fixed.shape))
        return self._composed("forward", self.space.fix_to_net, self.space.net_to_mov, self.fixed.shape)

    @cached_property
    def inverse_vox(self) -> np.ndarray:
        if self.is_matrix:
            return np.asarray(matrix_field(np.linalg.inv(self.matrix_vox), self.moving.shape))
        return self._composed("inverse", self.space.mov_to_net, self.space.net_to_fix, self.moving.shape)

    def _composed(self, which: str, target_to_net: np.ndarray, net_to_source: np.ndarray, shape) -> np.ndarray:
        net = self.network_fields[which]
        if _on_network_grid(target_to_net, net.shape[:3], shape):
            out = np.asarray(matrix_after_field(net_to_source, net))  # compose_native without interpolation
        else:
            out = np.asarray(compose_native(net, target_to_net, net_to_source, tuple(shape)))
        del self.network_fields[which]  # only once composed: a failed attempt can be retried
        return out

    @cached_property
    def forward(self) -> np.ndarray:
        return np.asarray(
            _to_ras(self.forward_vox, self.moving.affine.astype(np.float32), self.fixed.affine.astype(np.float32))
        )

    @cached_property
    def inverse(self) -> np.ndarray:
        return np.asarray(
            _to_ras(self.inverse_vox, self.fixed.affine.astype(np.float32), self.moving.affine.astype(np.float32))
        )

    def moved(self, method: str = "linear", fill: float = 0.0) -> nib.Nifti1Image:
        """The moving image on the fixed grid (`-o`): a float32 NIfTI image with the fixed
        image's voxel-to-RAS matrix, ready for `nib.save` (`np.asarray(img.dataobj)`: the voxels).
        `method`: "linear" or "nearest" (labels); `fill`: the value outside the moving image."""
        return _image(
            resample(
                jnp.asarray(self.moving.data, jnp.float32), jnp.asarray(self.forward_vox), method, jnp.float32(fill)
            ),
            self.fixed.affine,
        )

    def fixed_moved(self, method: str = "linear", fill: float = 0.0) -> nib.Nifti1Image:
        """The fixed image on the moving grid (`-O`), with the moving image's matrix (as `moved`)."""
        return _image(
            resample(
                jnp.asarray(self.fixed.data, jnp.float32), jnp.asarray(self.inverse_vox), method, jnp.float32(fill)
            ),
            self.moving.affine,
        )

    def moved_header(self) -> np.ndarray:
        """`-H` for matrix methods: the moving image's new voxel-to-RAS matrix (voxels unchanged)."""
        if not self.is_matrix:
            raise OptionError(
                "header-only output needs a matrix result (a method that gives one, as affine or rigid)",
                argument="header_only",
            )
        return self.affine @ self.moving.affine

    def fixed_header(self) -> np.ndarray:
        """`-H` with `-O`: the fixed image's new voxel-to-RAS matrix."""
        if not self.is_matrix:
            raise OptionError(
                "header-only output needs a matrix result (a method that gives one, as affine or rigid)",
                argument="header_only",
            )
        return np.linalg.inv(self.affine) @ self.fixed.affine


def _image(data, affine: np.ndarray) -> nib.Nifti1Image:
    # The grid travels with the voxels, as `save_image` writes it (scanner-based qform and sform).
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    return img


# A module-level jit: one compilation per shape and method, reused across calls and results.
@program(static_argnames=("method",))
def resample(data, disp_vox, method, fill):
    """`data` (x, y, z) read at `p + disp_vox[p]` for every voxel `p` of `disp_vox`'s grid
    (voxels of `data`); `method` "linear" or "nearest", `fill` outside (`sample_image`)."""
    return sample_image(data, voxel_grid(disp_vox.shape[:3]) + disp_vox, method, fill)


def _network_fields(velocity, fw_pre, fw_post, bw_pre, bw_post, steps: int, scale: int, identity_pre: bool, shape=None):
    """Forward and backward displacements on the full network grid, from a coarse velocity.

    One path for every method. `identity_pre` (no matrix before the warp) reads the warp at the grid
    points themselves, exactly; SynthMorph's deform (`post` = scale 2) then gives the reference's
    `upsample_half_field` bit for bit (tests/test_pipeline_reference.py). `shape` crops the fields
    to the network grid where the velocity's grid, `scale` times coarser, overhangs it. Each step
    is its own compiled program (one program made XLA evaluate producers again inside each
    consumer: 2.7 -> 2.1 s for joint's fields at extent 256, measured; the same numbers).
    """
    fields = []
    for negate, pre, post in ((False, fw_pre, fw_post), (True, bw_pre, bw_post)):
        disp = _integrate_velocity(velocity, steps=steps, negate=negate)
        total = coarse_total_displacement(disp, None if identity_pre else pre, post)
        fields.append(_full_resolution(total, scale=scale, shape=shape))
    return fields


@program(static_argnames=("steps", "negate"))
def _integrate_velocity(velocity, steps: int, negate: bool):
    return scaling_and_squaring(-velocity if negate else velocity, steps)


@program(static_argnames=("scale", "shape"))
def _full_resolution(total, scale: int, shape):
    full = to_full_resolution(total, scale)
    return full if shape is None else full[: shape[0], : shape[1], : shape[2]]


def network_fields(transform: NetworkTransform, steps: int, shape=None) -> tuple[jax.Array, jax.Array]:
    """`transform`'s forward and backward displacement fields on the full network grid (voxels),
    cropped to `shape` (the network grid's) when given."""
    fw_pre, fw_post = transform.forward_sides()
    bw_pre, bw_post = transform.inverse_sides()
    identity_pre = all(m is None or np.array_equal(m, np.eye(4)) for m in (fw_pre, bw_pre))
    eye = np.eye(4)
    as32 = lambda m: np.asarray(eye if m is None else m, np.float32)
    fw, bw = _network_fields(
        transform.velocity,
        as32(fw_pre),
        as32(fw_post),
        as32(bw_pre),
        as32(bw_post),
        steps,
        transform.scale,
        identity_pre,
        None if shape is None else tuple(int(n) for n in shape),
    )
    return fw, bw


def _ras_displacement(disp_vox, source_affine, target_affine):
    # disp = A_src (p + d) - A_trg p, in float32 as surfa's conversion does.
    grid = voxel_grid(disp_vox.shape[:3])
    return apply_matrix(source_affine, grid + disp_vox) - apply_matrix(target_affine, grid)


def _on_network_grid(target_to_net: np.ndarray, net_shape, target_shape) -> bool:
    # The optimiser's grid is the fixed image's own when that is isotropic (`working_grid`): up to
    # header rounding, the field is then read at its own grid points and needs no interpolation
    # (0.09 s instead of 0.84 s at 197x233x189, measured).
    return tuple(net_shape) == tuple(target_shape[:3]) and np.allclose(target_to_net, np.eye(4), rtol=0, atol=1e-5)


_to_ras = program(_ras_displacement)


def register(
    moving: Image | str | os.PathLike,
    fixed: Image | str | os.PathLike,
    model=None,
    *,
    settings: Settings | None = None,
    method: Method | str | None = None,
    hyper: float | None = None,
    steps: int | None = None,
    extent: int | None = None,
    init_vox: np.ndarray | None = None,
    mid_space: bool = False,
    clip_percentile: float | None = None,
    stages: Stages | None = None,
    algorithm: str | None = None,
    keep_inputs: bool = False,
    mask_fixed=None,
    mask_moving=None,
    mask_threshold: float | None = None,
    **options,
) -> Registration:
    """Register `moving` to `fixed`; nothing is written.

    `model` is a loaded SynthMorph model (`ilex.load`): the deformable hypernetwork or fixed-λ
    U-Net (`-m deform`), the affine/rigid feature detector (`-m affine`/`rigid`), or a pair
    (affine, deformable) for `-m joint`. `settings` (`ilex.Settings`) says how to register;
    the keywords `method`, `hyper`, `steps`, `extent`, `clip_percentile`, `algorithm` and the
    optimiser's `options` are its fields, given here for short, and override it where not None.
    `method` overrides the choice: a name ("deform",
    "affine", "rigid", "joint") applied to `model`, or any `Method` object
    (`ilex.registration.methods`). `hyper` is λ for the deformable models and the optimiser
    (default 0.5), `steps` the scaling-and-squaring steps (default 7; the optimiser optimises
    with the same count), `extent` the network cube side (mm) for SynthMorph's models and, for the
    optimiser (which works at the fixed image's resolution), the cap on its grid: at most
    `extent`^3 voxels, coarser beyond (`working_grid.image_grid`). `options` are the optimiser's,
    for method "optimize" or "refine" (`similarity`, `levels`, `iterations`, ...: see
    `OptimizeMethod`). A `Method` object carries its own λ, steps and options: `hyper` or
    `steps` that differ from its own, or any `options`, are refused rather than ignored.
    `init_vox` is an initial affine from moving to fixed voxels (`affine_init.read_initial_affine`);
    `mid_space` (mri_synthmorph's `-M`) splits it between both images by its matrix square root.
    `clip_percentile` enables the model card's percentile clipping (not FreeSurfer's behaviour).
    `algorithm` ("direct", "winograd" or "winograd4", see `ilex.models.conv`) picks the
    convolution of both networks; by default on CPU Winograd F(4,3) for the deformable U-Net and
    F(2,3) for the affine detector (whose fit magnifies rounding), and XLA's own on GPU.
    `keep_inputs` keeps both network inputs on the result (`Registration.inputs`, what `-d`
    writes: 128 MB at extent 256); otherwise they are let go.
    `mask_fixed`, `mask_moving` (paths, nibabel images or `Image`s, on any grid) are cost-function
    masks, as ANTs' `-x`: the similarity is measured only where they are non-zero (each on its
    image; `ilex.registration.masks`). They hold 0 and 1, or any values with `mask_threshold`
    (the voxels above it are the mask); only a method that `takes_masks` (optimize, refine) uses
    them, and they are checked before any work.
    Raises `ImageFileError` for unusable images or masks, `OptionError` for out-of-range or conflicting
    options and `TypeError` for options the method does not take.
    """
    settings = Settings.of(
        settings,
        method=method,
        hyper=hyper,
        steps=steps,
        extent=extent,
        clip_percentile=clip_percentile,
        algorithm=algorithm,
        **options,
    )
    method = settings.method_for(model)
    given = {"fixed": mask_fixed, "moving": mask_moving}
    check_mask_options(getattr(method, "takes_masks", False), f"method {method.name}", given, mask_threshold)
    steps = method.steps or settings.effective_steps  # the method's own, when it has one
    extent, clip_percentile = settings.extent, settings.clip_percentile
    stages = stages or Stages()
    moving = moving if isinstance(moving, Image) else load_image(moving, what="moving image")
    fixed = fixed if isinstance(fixed, Image) else load_image(fixed, what="fixed image")
    images = {"fixed": fixed, "moving": moving}
    masks = {
        k: read_mask(m, images[k], what=f"{k} mask", threshold=mask_threshold)
        for k, m in given.items()
        if m is not None
    }
    # The method gets its grid back with the images (its voxel size in mm).
    grid = method.working_grid(moving, fixed, extent)
    with stages("resample", f"to the {'x'.join(map(str, grid.fixed_shape))} grid of {grid.voxel_size:.3g} mm"):
        try:
            space = network_space(
                moving,
                fixed,
                extent,
                init_vox,
                centre_on_fixed=method.centre_on_fixed,
                mid_space=mid_space,
                grid=grid,
            )
        except ValueError as e:
            raise OptionError(str(e), argument="mid_space") from None
        check_overlap(
            moving,
            fixed,
            space.net_to_fix @ np.linalg.inv(space.start) @ space.mov_to_net,
            centred=not method.centre_on_fixed and init_vox is None,
        )
        mov_net = to_network(
            moving, space.net_to_mov, space.moving_shape, clip_percentile, antialiasing(grid, moving.affine)
        )
        fix_net = to_network(fixed, space.net_to_fix, space.shape, clip_percentile, antialiasing(grid, fixed.affine))
        _check_contrast(moving, fixed, mov_net, fix_net)
        masks_net = network_masks(masks, space, moving, fixed) if masks else None
    with stages("network", method.describe(extent, steps, grid)):
        if masks_net is None:
            transform = method.estimate(mov_net, fix_net, grid)
        else:
            transform = method.estimate(mov_net, fix_net, grid, masks=masks_net)
        if transform.velocity is not None:
            fw, bw = network_fields(transform, steps, space.shape)
            fw.block_until_ready()
    inputs = (np.asarray(mov_net), np.asarray(fix_net)) if keep_inputs else None
    del mov_net, fix_net
    result = Registration(
        moving,
        fixed,
        space,
        method.name,
        transform,
        inputs,
        stages.times,
        {} if transform.is_matrix else {"forward": fw, "inverse": bw},
        memory=stages.memory,
        masks=masks,
    )
    if not transform.is_matrix:
        with stages("compose", "forward warp in native space"):
            _ = result.forward_vox  # every output but -T/-O needs it; the inverse waits until asked for
    return result


def _check_contrast(moving: Image, fixed: Image, mov_net, fix_net) -> None:
    # A flat network input normalises to 0/0 = NaN, which would flow through the whole network.
    for image, net, what in ((moving, mov_net, "moving"), (fixed, fix_net, "fixed")):
        if not np.isfinite(np.asarray(net)).all():
            raise ImageFileError(
                image.path or what,
                f"the {what} image is flat inside the network's {'x'.join(map(str, net.shape))} grid centred on the "
                f"{'fixed' if what == 'fixed' else 'chosen'} image, so there is nothing to register; check that the "
                "images overlap, or pass an initial affine with -i",
            )
