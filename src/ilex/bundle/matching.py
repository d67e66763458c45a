"""Matching the tensors of a safetensors file to a model's parameters.

A bundle written by ilex uses ilex's own names. A bundle published by someone else may not.
Names are used where they match; the rest are matched by structure: tensors are grouped by
layer (the name minus its last component), layers are taken in natural order (`2` before
`10`), and inside a layer each shape must occur once, so that the pairing is forced.
"""

from __future__ import annotations

import re
from collections import defaultdict


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _layers(names: list[str]) -> list[list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for name in names:
        groups[name.rsplit(".", 1)[0] if "." in name else ""].append(name)
    return [groups[p] for p in sorted(groups, key=_natural_key)]


def match_tensors(expected: list[tuple[str, tuple]], found: dict[str, tuple]) -> dict[str, str]:
    """Map each expected parameter name to a tensor name in the file.

    `expected` lists (name, shape) in the model's parameter order; `found` maps the file's names
    to shapes. Raises `ValueError` with what differs when no unambiguous pairing exists.
    """
    exp_shapes = dict(expected)
    if set(found) == set(exp_shapes):
        wrong = [f"{n}: expected {exp_shapes[n]}, found {found[n]}" for n in exp_shapes if tuple(found[n]) != tuple(exp_shapes[n])]
        if wrong:
            raise ValueError("tensor shapes differ from the config: " + "; ".join(wrong[:4]) + (" ..." if len(wrong) > 4 else ""))
        return {n: n for n in exp_shapes}
    if len(found) != len(expected):
        raise ValueError(
            f"the config's architecture has {len(expected)} tensors, the file has {len(found)} "
            f"(first expected {expected[0][0]} {expected[0][1]})"
        )
    # Tensors with the same name on both sides are paired first; names are authoritative.
    mapping = {n: n for n in exp_shapes if n in found and tuple(found[n]) == tuple(exp_shapes[n])}
    rest_exp = [n for n, _ in expected if n not in mapping]
    rest_found = [n for n in found if n not in mapping.values()]
    exp_layers, found_layers = _layers(rest_exp), _layers(rest_found)
    if len(exp_layers) != len(found_layers):
        raise ValueError(
            f"tensor names differ and the layers do not correspond: {len(exp_layers)} expected, "
            f"{len(found_layers)} in the file"
        )
    for i, (el, fl) in enumerate(zip(exp_layers, found_layers)):
        by_shape = {tuple(found[n]): n for n in fl}
        want = [tuple(exp_shapes[n]) for n in el]
        if len(by_shape) != len(fl) or sorted(by_shape) != sorted(want):
            raise ValueError(
                f"tensor names differ and layer {i} does not match by shape: expected {el[0].rsplit('.', 1)[0]} with "
                f"shapes {want}, found {fl[0].rsplit('.', 1)[0]} with {[tuple(found[n]) for n in fl]}"
            )
        for n in el:
            mapping[n] = by_shape[tuple(exp_shapes[n])]
    return mapping
