"""A model's parameters as a flat list: names, shapes, and a skeleton to fill.

Shared by the bundle format (safetensors names) and the Keras h5 reader (positional order),
so that neither has to import the other.
"""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np


def _is_tensor(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct))


def parameter_names(model) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every array leaf, in pytree order, named by attribute path (`convs.3.bias`)."""
    leaves = jax.tree_util.tree_flatten_with_path(eqx.filter(model, _is_tensor))[0]
    out = []
    for path, leaf in leaves:
        parts = [str(getattr(k, "name", getattr(k, "idx", getattr(k, "key", k)))) for k in path]
        out.append((".".join(parts), tuple(leaf.shape)))
    return out


def template(cls: type, kwargs: dict):
    """The model's structure (shapes only, nothing allocated)."""
    return eqx.filter_eval_shape(cls, **kwargs, key=jax.random.key(0))


def fill_parameters(skeleton, arrays: list):
    """`skeleton` (a model or its eval_shape) with its array leaves replaced, in order, by `arrays`."""
    params, static = eqx.partition(skeleton, _is_tensor)
    treedef = jax.tree_util.tree_structure(params)
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, arrays), static)
