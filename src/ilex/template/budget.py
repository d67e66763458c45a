"""What a round needs, per image and in all, stated and checked before the round starts: memory
(one registration, one image's share of the sums, one sum of two partials) and disk (the round's
own files, and the final outputs).

The registration's peak is the batch's rule (`BatchSettings.memory_estimate`, from
`ilex.registration.memory`). A share (`partial.warp_share`) holds, per voxel V of the template
grid, the warp read back (12 B), its residual (12 B, and JAX's copy), the residual and the moved
image in float64 and in int64 (48 + 16 B), the moved image (8 B), the round's template, mask and
affine fit (16 B) and the worker's running sum (32 B): `SHARE_BYTES_PER_VOXEL` with a margin, on
top of the process's own `PROCESS_BYTES` (JAX's runtime and the compiled programs). A sum task
holds its two partials and their sum (3 x 32 B per voxel). Round 0's share (an image resampled
to the first image's grid) needs less than a later round's.

Disk, per image and round: the warp (12 B per template voxel, uncompressed: `state.INTERMEDIATE`)
and the moved image (4 B); in the last round the inverse warp too (12 B per image voxel), and the
final outputs (the same three, gzip'ed: counted uncompressed, an upper bound), plus the QC
directory (`QC_BYTES`). A round's files are deleted once it is committed (unless --keep-rounds),
so the peak is one round's.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from ..errors import OptionError

PROCESS_BYTES = 0.5e9
SHARE_BYTES_PER_VOXEL = 160.0
PARTIAL_BYTES_PER_VOXEL = 32.0  # int64 residual (3 per voxel) and image
SUM_BYTES_PER_VOXEL = 3 * PARTIAL_BYTES_PER_VOXEL
# The last round's outputs of one image: the shape update's grids (points, residual, its exponential: 36 B),
# the template (4 B), the forward warp read and composed (24 B), the moved image (8 B) and the Jacobian (8 B)
# per template voxel; the inverse warp read and composed (24 B) and the image (4 B) per image voxel; margins.
FINAL_BYTES_PER_VOXEL = 120.0
FINAL_BYTES_PER_IMAGE_VOXEL = 48.0
QC_BYTES = 2e6  # qc.json and the pair's report page with its pictures (under 1 MB measured), with a margin


@dataclass(frozen=True)
class RoundBudget:
    """Round `round`'s needs: `images` to register (`todo` of them not yet done), memory in bytes
    for one `registration`, one image's `share`, one `sum` task and one image's `final` outputs
    (on Dask, in the last round), and disk in bytes per image
    (`disk_per_image`) and for the round's files still to be written (`disk`)."""

    round: int
    images: int
    todo: int
    registration: float
    share: float
    sum: float
    final: float
    disk_per_image: float
    disk: float

    @property
    def local_peak(self) -> float:
        """Peak on this machine, where a share is computed beside the next registration."""
        return self.registration + self.share

    @property
    def worker_peak(self) -> float:
        """Peak of one Dask worker that runs one task at a time (a registration, a share or a sum)."""
        return max(self.registration, self.share, self.sum, self.final)

    def describe(self) -> str:
        return (
            f"round {self.round}: {self.images} images; memory {self.registration / 2**30:.2f} GiB per registration, "
            f"{self.share / 2**30:.2f} GiB per image's share of the sums, {self.sum / 2**30:.2f} GiB per sum; "
            f"disk {self.disk_per_image / 2**20:.1f} MiB per image, {self.disk / 2**30:.2f} GiB for the round"
        )


def round_budget(
    k: int,
    registration: float,
    template_voxels: int,
    image_voxels: list[int],
    todo: int,
    final: bool,
    warps: bool = True,
) -> RoundBudget:
    """Round `k`'s `RoundBudget`: `registration` bytes (the batch's rule), a template grid of
    `template_voxels`, the images' own grids (`image_voxels`, for the last round's inverse warps);
    `todo` images still to register; `final`: the last round; `warps`: False for round 0, whose
    affine stage writes matrices (and QC) alone."""
    largest = max(image_voxels, default=template_voxels)
    per_image = 16.0 * template_voxels * warps + QC_BYTES  # the warp and the moved image, uncompressed; QC
    outputs = 0.0
    if final:
        per_image += 12.0 * largest  # the inverse warp
        outputs = 16.0 * template_voxels + 12.0 * largest  # the final warp, moved image and inverse
    return RoundBudget(
        round=k,
        images=len(image_voxels),
        todo=todo,
        registration=float(registration),
        share=PROCESS_BYTES + SHARE_BYTES_PER_VOXEL * template_voxels,
        sum=PROCESS_BYTES + SUM_BYTES_PER_VOXEL * template_voxels,
        final=(PROCESS_BYTES + FINAL_BYTES_PER_VOXEL * template_voxels + FINAL_BYTES_PER_IMAGE_VOXEL * largest) * final,
        disk_per_image=per_image + outputs,
        disk=per_image * todo + outputs * len(image_voxels),
    )


def check_budget(
    budget: RoundBudget, outdir: str, client=None, memory_resource: str = "MEMORY", memory_check: bool = True
) -> None:
    """Refuse a round that cannot fit, before it starts: `OptionError` when the free disk under
    `outdir` is short of the round's files, when this machine's free memory (`available_bytes`,
    the batch's rule) is short of `local_peak` (no `client`; not with `memory_check` False), or
    when no Dask worker declaring `memory_resource` has `worker_peak` (workers that declare none
    are not checked: Dask does not limit them either)."""
    from ..registration.memory import available_bytes

    free = shutil.disk_usage(outdir).free
    if budget.disk > free:
        raise OptionError(
            f"{outdir}: round {budget.round} needs about {budget.disk / 2**30:.1f} GiB of disk for {budget.todo} "
            f"images ({budget.disk_per_image / 2**20:.0f} MiB each) but {free / 2**30:.1f} GiB is free"
        )
    if client is None:
        if not memory_check:
            return
        available = available_bytes()
        if budget.local_peak > available:
            raise OptionError(
                f"round {budget.round}: a registration and an image's share of the sums need about "
                f"{budget.local_peak / 2**30:.1f} GiB of memory but only {available / 2**30:.1f} GiB is available; "
                "choose a smaller extent (-e) or a Dask cluster, or pass --no-memory-check to try anyway"
            )
        return
    from ..batch.dask import memory_capacities

    capacities = memory_capacities(client, memory_resource)
    if capacities and max(capacities) < budget.worker_peak:
        raise OptionError(
            f"round {budget.round}: no Dask worker has room for one task: it needs {memory_resource}="
            f"{budget.worker_peak:.3g} bytes, the largest worker declares {max(capacities):.3g}"
        )


def task_resources(budget: RoundBudget, client, memory_resource: str = "MEMORY") -> tuple[dict | None, ...]:
    """The resources a share task, a sum task and a final-outputs task declare
    ({memory_resource: bytes}), or None each when no worker declares the resource (a task that
    asks for a resource no worker has would never run)."""
    if client is None:
        return None, None, None
    from ..batch.dask import memory_capacities

    if not memory_capacities(client, memory_resource):
        return None, None, None
    return {memory_resource: budget.share}, {memory_resource: budget.sum}, {memory_resource: budget.final}


def image_voxels(paths) -> list[int]:
    """Voxels of each image's grid, from the headers alone."""
    import nibabel as nib

    return [int(_prod(nib.load(os.fspath(p)).shape[:3])) for p in paths]


def _prod(shape) -> int:
    out = 1
    for n in shape:
        out *= int(n)
    return out
