"""A synthetic cohort whose template is known: one real anatomy seen through N random transforms.

The source is Colin27's T1 and its AAL labels (tests/data.py), block-averaged `step` times; with
1 mm voxels a 3x reduction is a 60 x 72 x 60 mm head that a 64-96 mm network cube covers (the
tests), with `step` mm voxels the head keeps its size (the benchmark). Subject j samples the source
at `psi_j(x) = A_j (x + e_j(x))` (world mm, origin at the grid's centre), with `A_j = expm(L_j)`
and `e_j = exp(v_j)` (scaling and squaring of a smooth stationary velocity on a coarse grid,
interpolated). The L_j and the v_j are each made to average to zero over the cohort, so
the log-domain mean of the transforms is the identity and an unbiased template sits on the
source. Each subject also gets its own intensity curve (gamma), gain and Gaussian noise.

Everything here is numpy/scipy (never ilex's own resampler), so it is an independent truth for
the template tests and `bench/template_vs_ants.py`.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
from scipy.linalg import expm
from scipy.ndimage import gaussian_filter, map_coordinates


def _block_mean(data: np.ndarray, step: int) -> np.ndarray:
    shape = [n // step for n in data.shape]
    data = data[: shape[0] * step, : shape[1] * step, : shape[2] * step]
    return data.reshape(shape[0], step, shape[1], step, shape[2], step).mean(axis=(1, 3, 5))


def source(
    t1_path: str, labels_path: str, step: int = 3, voxel_mm: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T1, labels, affine): Colin27 block-averaged `step` times (labels: the centre voxel of each
    block), with `voxel_mm` voxels (1 mm with step 3 shrinks the head 3x; step 2 with 2 mm keeps its
    size), RAS, world origin at the grid's centre."""
    t1 = np.asarray(nib.load(t1_path).dataobj, np.float32)
    labels = np.asarray(nib.load(labels_path).dataobj)
    small = _block_mean(t1, step).astype(np.float32) if step > 1 else t1
    centre = step // 2
    lab = labels[centre::step, centre::step, centre::step][: small.shape[0], : small.shape[1], : small.shape[2]]
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = -(np.asarray(small.shape) - 1) / 2.0 * voxel_mm
    return small, lab.astype(np.int16), affine


def _exp_velocity(v: np.ndarray, steps: int = 7) -> np.ndarray:
    """exp(v) by scaling and squaring (voxel units; scipy, linear, nearest edge)."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in v.shape[:3]], indexing="ij"), -1)
    u = v / 2.0**steps
    for _ in range(steps):
        at = np.moveaxis(grid + u, -1, 0)
        u = u + np.stack([map_coordinates(u[..., c], at, order=1, mode="nearest") for c in range(3)], -1)
    return u


def transforms(
    n: int,
    extent_mm,
    seed: int = 0,
    rotation_deg: float = 4.0,
    scaling: float = 0.05,
    translation_mm: float = 3.0,
    warp_mm: float = 3.0,
    smoothness_mm: float = 6.0,
    spacing_mm: float = 2.0,
):
    """n world matrices A_j (4x4) and n displacements e_j = exp(v_j) (mm, on a grid of `spacing_mm`
    covering `extent_mm` around the centre); the logs of the A_j and the v_j each average to zero."""
    rng = np.random.default_rng(seed)
    logs = []
    for _ in range(n):
        skew = rng.normal(0.0, np.deg2rad(rotation_deg), 3)
        log = np.zeros((4, 4))
        log[:3, :3] = np.array([[0, -skew[2], skew[1]], [skew[2], 0, -skew[0]], [-skew[1], skew[0], 0]])
        sym = rng.normal(0.0, scaling, (3, 3))
        log[:3, :3] += (sym + sym.T) / 2.0
        log[:3, 3] = rng.normal(0.0, translation_mm, 3)
        logs.append(log)
    mean_log = np.mean(logs, axis=0)
    matrices = [expm(log - mean_log) for log in logs]
    shape = tuple(int(np.ceil(e / spacing_mm)) + 1 for e in extent_mm)
    sigma = smoothness_mm / spacing_mm
    velocities = np.stack(
        [np.stack([gaussian_filter(rng.standard_normal(shape), sigma) for _ in range(3)], -1) for _ in range(n)]
    )
    velocities -= velocities.mean(axis=0)
    velocities *= warp_mm / np.abs(velocities).max()
    return matrices, [_exp_velocity(v / spacing_mm) * spacing_mm for v in velocities], spacing_mm


def subject(
    t1: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    matrix: np.ndarray,
    displacement: np.ndarray,
    spacing_mm: float,
    rng: np.random.Generator,
    noise: float = 0.03,
) -> tuple[np.ndarray, np.ndarray]:
    """One subject's image and labels on the source grid: the source sampled at psi(x) = A (x + e(x))."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in t1.shape], indexing="ij"), -1)
    world = grid @ affine[:3, :3].T.astype(np.float32) + affine[:3, 3].astype(np.float32)
    del grid
    # e lives on a coarse grid centred like the image: its index of world point x is x / spacing + centre.
    at = np.moveaxis(world / spacing_mm + (np.asarray(displacement.shape[:3], np.float32) - 1) / 2, -1, 0)
    e = np.stack([map_coordinates(displacement[..., c], at, order=1, mode="nearest") for c in range(3)], -1)
    del at
    psi = (world + e) @ matrix[:3, :3].T.astype(np.float32) + matrix[:3, 3].astype(np.float32)
    del world, e
    inv = np.linalg.inv(affine).astype(np.float32)
    coords = np.moveaxis(psi @ inv[:3, :3].T + inv[:3, 3], -1, 0)
    del psi
    image = map_coordinates(t1, coords, order=1, mode="constant", cval=0.0)
    top = float(t1.max())
    image = top * (np.clip(image, 0, None) / top) ** rng.uniform(0.8, 1.25) * rng.uniform(0.7, 1.4)
    image = image + rng.normal(0.0, noise * top, image.shape)
    return image.astype(np.float32), map_coordinates(labels, coords, order=0, mode="constant", cval=0).astype(np.int16)


def make_cohort(
    out_dir: str | os.PathLike,
    t1_path: str,
    labels_path: str,
    n: int = 6,
    step: int = 3,
    seed: int = 0,
    voxel_mm: float = 1.0,
    **kwargs,
) -> dict:
    """Write the source, its labels and n subjects (image and labels) to `out_dir`; returns their paths.

    `kwargs` go to `transforms` (rotation_deg, scaling, translation_mm, warp_mm, smoothness_mm, spacing_mm).
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    t1, labels, affine = source(t1_path, labels_path, step, voxel_mm)
    matrices, displacements, spacing = transforms(n, np.asarray(t1.shape) * voxel_mm, seed, **kwargs)
    rng = np.random.default_rng(seed + 1)
    paths = {
        "source": os.path.join(out_dir, "source.nii.gz"),
        "source_labels": os.path.join(out_dir, "source_labels.nii.gz"),
        "images": [],
        "labels": [],
    }
    nib.save(nib.Nifti1Image(t1, affine), paths["source"])
    nib.save(nib.Nifti1Image(labels, affine), paths["source_labels"])
    for j, (matrix, disp) in enumerate(zip(matrices, displacements, strict=True)):
        image, lab = subject(t1, labels, affine, matrix, disp, spacing, rng)
        paths["images"].append(os.path.join(out_dir, f"sub{j:02d}.nii.gz"))
        paths["labels"].append(os.path.join(out_dir, f"sub{j:02d}_labels.nii.gz"))
        nib.save(nib.Nifti1Image(image, affine), paths["images"][-1])
        nib.save(nib.Nifti1Image(lab, affine), paths["labels"][-1])
    return paths


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the labels (> 0) present in `a`."""
    scores = []
    for label in np.unique(a[a > 0]):
        x, y = a == label, b == label
        scores.append(2.0 * np.logical_and(x, y).sum() / (x.sum() + y.sum()))
    return float(np.mean(scores))


def correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation of two images (inside `mask`)."""
    if mask is not None:
        a, b = a[mask], b[mask]
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])
