"""Voxel-to-world geometry: image centres and SynthMorph's network space (docs/spec-deform.md §5.1)."""

from __future__ import annotations

import numpy as np

# Columns of the LIA rotation: voxel axes point Left, Inferior, Anterior.
LIA = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def world_centre(affine: np.ndarray, shape) -> np.ndarray:
    """World (RAS) position of voxel `shape / 2`, FreeSurfer's and surfa's image centre."""
    return affine[:3, :3] @ (np.asarray(shape[:3], float) / 2) + affine[:3, 3]


def network_affine(extent: int, centre: np.ndarray) -> np.ndarray:
    """vox2world of the network space: 1 mm, LIA, `extent`^3 voxels, voxel extent/2 at `centre`."""
    affine = np.eye(4)
    affine[:3, :3] = LIA
    affine[:3, 3] = np.asarray(centre, float) - LIA @ np.full(3, extent / 2)
    return affine


def shearless_components(affine: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(voxel size, rotation with unit columns, centre), as FreeSurfer's MGH header stores them."""
    voxsize = np.linalg.norm(affine[:3, :3], axis=0)
    return voxsize, affine[:3, :3] / voxsize, world_centre(affine, shape)


def fs_affine(voxsize, rotation, centre, shape) -> np.ndarray:
    """vox2world from FreeSurfer's header fields: voxel size, unit rotation columns, centre (of voxel shape/2)."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(rotation, float) * np.asarray(voxsize, float)
    affine[:3, 3] = np.asarray(centre, float) - affine[:3, :3] @ (np.asarray(shape[:3], float) / 2)
    return affine
