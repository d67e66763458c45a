"""Ordering computations inside one jitted function without touching their values.

XLA schedules independent operations as it likes. Two places need a fixed order for memory:
the second U-Net pass must not run beside the first (both passes' activations would be alive
at once), and a large buffer built from nothing (a voxel grid, a layer's zero-initialised
output) must not be allocated up front, where it would sit beside the network's peak.
"""

from __future__ import annotations

import jax
from jaxtyping import Array


def after(value: Array, dependency: Array) -> Array:
    """`value` itself, usable only once `dependency` has been computed.

    `lax.optimization_barrier` makes all of its outputs wait for all of its inputs, and XLA
    moves no operation across it. Unlike arithmetic ties (`value + 0 * dependency[0]`), the
    values are untouched: a NaN or Inf in `dependency` cannot reach `value`.
    """
    value, _ = jax.lax.optimization_barrier((value, dependency))
    return value
