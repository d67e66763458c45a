"""Random smooth diffeomorphic displacements: a velocity from multi-scale noise, integrated."""

from __future__ import annotations

from collections.abc import Sequence

from jaxtyping import Array, Float, PRNGKeyArray

from ..transforms.integrate import scaling_and_squaring
from .noise import perlin_noise, resize_linear


def random_displacement(
    key: PRNGKeyArray,
    shape: Sequence[int],
    std: float,
    res: float | Sequence[float],
    steps: int,
    *,
    modulate: bool = True,
    half_res: bool = True,
) -> Float[Array, "x y z 3"]:
    """A random diffeomorphic displacement on a grid of `shape`, in voxels by array axis (pull-back).

    The velocity v is `perlin_noise` with 3 channels: for each factor r of `res`, Gaussian noise on a grid
    1/r of the full one, of SD ~ U(0, std) (or `std` itself with `modulate=False`), linearly upsampled;
    the factors' fields summed. Then `exp(v)` by `steps` of scaling and squaring.

    With `half_res` (the reference: neurite@95b2b56 `labels_to_image`), v is drawn and integrated on the
    half grid (shape // 2, factors r / 2), and the displacement is doubled and linearly resized onto
    `shape`, so `std` is in half-grid voxels. Jittable and vmappable over `key`; `shape`, `res`,
    `steps` and the flags are static.
    """
    shape = tuple(int(n) for n in shape)
    res = tuple(res) if isinstance(res, Sequence) else (res,)
    grid = tuple(n // 2 for n in shape) if half_res else shape
    if min(grid) < 2:
        raise ValueError(f"shape={shape}: every side must be at least {4 if half_res else 2}")
    scales = tuple(r / 2 for r in res) if half_res else res
    velocity = perlin_noise(key, grid, 3, tuple(max(s, 1.0) for s in scales), (0.0 if modulate else std, std))
    displacement = scaling_and_squaring(velocity, steps)
    if half_res:
        # VoxelMorph's RescaleValues(2) then Resize(2): half-grid voxels are two full voxels.
        displacement = 2.0 * resize_linear(displacement, shape)
    return displacement
