"""Two registration methods that ilex does not know, for tests/test_method_seam.py.

They stand for a user's own `Method` subclass, reached by import path (`-m seam_methods:CentreShift`):
the batch, the template, the CLI and the output checks must read what each is from the object,
never from a table of known names. Neither is a registration worth the name: each answers with a
map computed in closed form, so a test can say what the written files must hold.
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from ilex.registration.methods import Method, NetworkTransform


def _centre_of_mass(image) -> np.ndarray:
    a = np.asarray(image, np.float64)
    grid = np.indices(a.shape).reshape(3, -1)
    return grid @ a.reshape(-1) / a.sum()


class CentreShift(Method):
    """A matrix: the translation that lays the moving image's centre of mass on the fixed one's
    (in network voxels, so written as an LTA or ITK text transform)."""

    name: ClassVar[str] = "centre-shift"
    summary: ClassVar[str] = "a translation between the centres of mass"
    yields_matrix: ClassVar[bool] = True

    def estimate(self, mov_net, fix_net, grid=None) -> NetworkTransform:
        matrix = np.eye(4)
        matrix[:3, 3] = _centre_of_mass(mov_net) - _centre_of_mass(fix_net)
        return NetworkTransform(matrix=matrix)


class ConstantFlow(Method):
    """A warp: a stationary velocity of `shift` network voxels everywhere, whose exponential is
    that translation (so written as a warp, whose displacement is `shift` in network axes)."""

    name: ClassVar[str] = "constant-flow"
    summary: ClassVar[str] = "a constant velocity"

    def __init__(self, shift: tuple[float, float, float] = (1.5, 0.0, -1.0)):
        self.shift = tuple(float(s) for s in shift)

    def estimate(self, mov_net, fix_net, grid=None) -> NetworkTransform:
        velocity = jnp.broadcast_to(jnp.asarray(self.shift, jnp.float32), (*fix_net.shape, 3))
        return NetworkTransform(velocity=velocity, scale=1)


class ZeroFlow(ConstantFlow):
    """The identity warp (a zero velocity): images already in place stay there, for tests whose
    images are aligned by construction and whose registrations must pass the report's rules."""

    name: ClassVar[str] = "zero-flow"
    summary: ClassVar[str] = "a zero velocity"

    def __init__(self):
        super().__init__((0.0, 0.0, 0.0))
