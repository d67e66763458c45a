"""The layout of SynthMorph's affine/rigid Keras weights (`synthmorph.affine.2.h5`, `rigid.1.h5`).

Keras order: a (kernel (3, 3, 3, cin, cout), bias (cout,)) pair per convolution — the encoder
levels, the added convolutions, the feature convolution. The shapes cannot tell encoder from
added convolutions (both keep the width), so the split is voxelmorph's and FreeSurfer's: four
encoder levels (docs/spec-affine.md), or as many as there are convolutions before the head.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..errors import WeightsFileError

ENCODER_LEVELS = 4


def looks_like_affine(shapes: Sequence[tuple[int, ...]]) -> bool:
    """Whether the first array is a 3-D convolution kernel (the deformable file starts with a Dense kernel)."""
    return bool(shapes) and len(shapes[0]) == 5


def infer_affine_kwargs(path: str, shapes: Sequence[tuple[int, ...]], rigid: bool = False) -> dict:
    """`SynthMorphAffine` constructor arguments implied by the weight shapes; `WeightsFileError` if none fit."""
    shapes = [tuple(int(d) for d in s) for s in shapes]
    if len(shapes) % 2 or len(shapes) < 4:
        raise WeightsFileError(
            path,
            f"not a SynthMorph affine model: expected (kernel, bias) pairs of at least 2 "
            f"convolutions, found {len(shapes)} arrays",
        )
    widths = []
    for k in range(0, len(shapes), 2):
        kernel, bias = shapes[k], shapes[k + 1]
        if len(kernel) != 5 or kernel[:3] != (3, 3, 3) or bias != kernel[4:]:
            raise WeightsFileError(
                path,
                f"not a SynthMorph affine model: convolution {k // 2}: expected a kernel "
                f"(3, 3, 3, cin, cout) and bias (cout,), found {kernel} and {bias}",
            )
        if widths and kernel[3] != widths[-1]:
            raise WeightsFileError(
                path,
                f"not a SynthMorph affine model: convolution {k // 2} takes {kernel[3]} "
                f"channels but the previous one gives {widths[-1]}",
            )
        if not widths:
            widths.append(kernel[3])
        widths.append(kernel[4])
    levels = min(ENCODER_LEVELS, len(widths) - 2)  # the last convolution is the feature head
    return {
        "enc_nf": widths[1 : 1 + levels],
        "add_nf": widths[1 + levels : -1],
        "num_feat": widths[-1],
        "num_chan": widths[0],
        "rigid": rigid,
    }


def is_rigid_file(path: str | os.PathLike, release_name: str | None = None) -> bool:
    """Rigid and affine weights share a layout: the release name, else the file name, tells them apart."""
    name = release_name or os.path.basename(os.fspath(path))
    return "rigid" in name.lower()
