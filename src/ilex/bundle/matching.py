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


def _families(names: list[str], shapes: dict[str, tuple]) -> dict[tuple, list[list[list[str]]]]:
    """Layers (name minus last part) grouped into families (layer name minus its index).

    Returns {signature: [family, ...]}, each family a list of layers in natural order; the
    signature is the sorted shapes of every layer, which is what a pairing can rely on.
    """
    layers: dict[str, list[str]] = defaultdict(list)
    for name in names:
        layers[name.rsplit(".", 1)[0] if "." in name else ""].append(name)
    families: dict[str, list[str]] = defaultdict(list)
    for prefix in sorted(layers, key=_natural_key):
        families[re.sub(r"[._-]?\d+$", "", prefix)].append(prefix)
    out: dict[tuple, list[list[list[str]]]] = defaultdict(list)
    for prefixes in families.values():
        members = [layers[p] for p in prefixes]
        signature = tuple(tuple(sorted(tuple(shapes[n]) for n in layer)) for layer in members)
        out[signature].append(members)
    return out


def match_tensors(expected: list[tuple[str, tuple]], found: dict[str, tuple]) -> dict[str, str]:
    """Map each expected parameter name to a tensor name in the file.

    `expected` lists (name, shape) in the model's parameter order; `found` maps the file's names
    to shapes. Raises `ValueError` with what differs when no unambiguous pairing exists.
    """
    exp_shapes = dict(expected)
    if set(found) == set(exp_shapes):
        wrong = [
            f"{n}: expected {exp_shapes[n]}, found {found[n]}"
            for n in exp_shapes
            if tuple(found[n]) != tuple(exp_shapes[n])
        ]
        if wrong:
            raise ValueError(
                "tensor shapes differ from the config: " + "; ".join(wrong[:4]) + (" ..." if len(wrong) > 4 else "")
            )
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
    exp_fams = _families(rest_exp, exp_shapes)
    found_fams = _families(rest_found, found)
    for signature, fams in exp_fams.items():
        match = found_fams.get(signature, [])
        if len(fams) != 1 or len(match) != 1:
            layer = fams[0][0]
            prefix = layer[0].rsplit(".", 1)[0]
            raise ValueError(
                f"tensor names differ and layer {prefix} does not match by shape: expected {len(fams[0])} layers "
                f"shaped like {[tuple(exp_shapes[n]) for n in layer]}, found "
                f"{'none' if not match else str(len(match)) + ' candidate families'} in the file"
            )
        for layer, file_layer in zip(fams[0], match[0], strict=False):
            by_shape = {tuple(found[n]): n for n in file_layer}
            if len(by_shape) != len(file_layer):
                layer_name = file_layer[0].rsplit(".", 1)[0]
                raise ValueError(f"layer {layer_name} has two tensors of the same shape; cannot pair by structure")
            for n in layer:
                mapping[n] = by_shape[tuple(exp_shapes[n])]
    return mapping
