"""The peers that bench/optimize_vs_ants.py runs beside `-m optimize`, one child process each.

Each runner reads the pair from disk, registers it, carries the moving labels onto the fixed
grid (nearest neighbour), and stops its clock there; it then writes `OUT_labels.npy` and the
full map (affine and deformable, composed) as `OUT_warp.npy`: RAS displacement in mm on the fixed
grid, fixed voxel p sampling the moving image at world `A_fix p + warp[p]`, the convention of
ilex's own warps, so that the parent scores every tool alike (cases.score).

* `SyN`: ANTs (antspyx), `ants.registration(type_of_transform="SyN")`, its defaults.
* `greedy`: PICSL greedy (`picsl-greedy` wheel, Python API), as the issue's table: affine
  (12 dof, started from the headers' alignment, greedy's default `-ia-identity`; 100x50x10) then
  deformable (100x40x20, `-s 1.732vox 0.7071vox`), NCC 2x2x2 (MI on cross-contrast pairs), `-float`, 2 threads.
* `fireants`: FireANTs on the CPU (PyTorch, no fused CUDA ops): `AffineRegistration` then
  `GreedyRegistration` (compositive), scales 4, 2, 1 with 200, 100, 50 iterations as its README's
  example, every other setting its default; MI on cross-contrast pairs.
"""

from __future__ import annotations

import resource
import time
from importlib import metadata

import numpy as np

PEERS = ("SyN", "greedy", "fireants")
THREADS = 2


def peak_rss_gb() -> float:
    """This process's peak resident memory (GiB), read when the registration and label warping end.

    From /proc/self/status (VmHWM, the peak of this process's own memory map): Linux's ru_maxrss
    also keeps the peak of the memory map that exec replaced, so a child started by a large
    parent (vfork shares the parent's map until exec) would report at least the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20


def versions() -> dict:
    out = {}
    for name in ("antspyx", "picsl_greedy", "fireants", "torch", "SimpleITK"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _itk_field_to_ras(path: str) -> np.ndarray:
    # An ITK displacement field (LPS mm, on the fixed grid) as nibabel reads it: (x, y, z, [1,] 3).
    import nibabel as nib

    field = np.asarray(nib.load(path).dataobj, np.float32).reshape(*nib.load(path).shape[:3], 3)
    return field * np.array([-1.0, -1.0, 1.0], np.float32)


def run_ants(spec: dict, out: str, transform: str = "SyN") -> dict:
    import ants

    start = time.perf_counter()
    fixed, moving = ants.image_read(spec["fixed"]), ants.image_read(spec["moving"])
    reg = ants.registration(fixed, moving, type_of_transform=transform)
    labels = ants.image_read(spec["moving_labels"])
    warped = ants.apply_transforms(fixed, labels, reg["fwdtransforms"], interpolator="nearestNeighbor")
    seconds, rss = time.perf_counter() - start, peak_rss_gb()
    np.save(out + "_labels.npy", warped.numpy().astype(np.int16))
    # The affine and SyN parts composed into one displacement field on the fixed grid.
    field = ants.apply_transforms(fixed, moving, reg["fwdtransforms"], compose=out + "_")
    np.save(out + "_warp.npy", _itk_field_to_ras(field))
    return {"seconds": seconds, "peak_rss_gb": rss}


def run_greedy(spec: dict, out: str) -> dict:
    from picsl_greedy import Greedy3D

    metric = "MI" if spec["cross_contrast"] else "NCC 2x2x2"
    fix, mov = spec["fixed"], spec["moving"]
    common = f"-d 3 -threads {THREADS} -float"
    start = time.perf_counter()
    g = Greedy3D()
    g.execute(f"{common} -a -dof 12 -ia-identity -i {fix} {mov} -m {metric} -n 100x50x10 -o {out}_affine.mat")
    g.execute(
        f"{common} -it {out}_affine.mat -i {fix} {mov} -m {metric} -n 100x40x20 -s 1.732vox 0.7071vox "
        f"-o {out}_deform.nii.gz"
    )
    g.execute(
        f"{common} -rf {fix} -ri NN -rm {spec['moving_labels']} {out}_moved_labels.nii.gz "
        f"-r {out}_deform.nii.gz {out}_affine.mat"
    )
    seconds, rss = time.perf_counter() - start, peak_rss_gb()
    import nibabel as nib

    np.save(out + "_labels.npy", np.rint(np.asarray(nib.load(out + "_moved_labels.nii.gz").dataobj)).astype(np.int16))
    g.execute(f"{common} -rf {fix} -rc {out}_full.nii.gz -r {out}_deform.nii.gz {out}_affine.mat")
    # The affine stage's labels alone, to tell what the deformable stage added (cases.score).
    g.execute(f"{common} -rf {fix} -ri NN -rm {spec['moving_labels']} {out}_affine_labels.nii.gz -r {out}_affine.mat")
    np.save(
        out + "_affine_labels.npy",
        np.rint(np.asarray(nib.load(out + "_affine_labels.nii.gz").dataobj)).astype(np.int16),
    )
    np.save(out + "_warp.npy", _itk_field_to_ras(out + "_full.nii.gz"))
    return {"seconds": seconds, "peak_rss_gb": rss, "metric": metric}


def run_fireants(spec: dict, out: str) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(THREADS)
    from fireants.io import BatchedImages, Image
    from fireants.registration.affine import AffineRegistration
    from fireants.registration.greedy import GreedyRegistration

    loss = "mi" if spec["cross_contrast"] else "cc"
    start = time.perf_counter()
    fixed_img = Image.load_file(spec["fixed"], device="cpu")
    moving_img = Image.load_file(spec["moving"], device="cpu")
    fixed, moving = BatchedImages([fixed_img]), BatchedImages([moving_img])
    scales, iters = [4, 2, 1], [200, 100, 50]
    affine = AffineRegistration(scales, iters, fixed, moving, loss_type=loss, progress_bar=False)
    affine.optimize()
    deform = GreedyRegistration(
        scales=scales,
        iterations=iters,
        fixed_images=fixed,
        moving_images=moving,
        loss_type=loss,
        init_affine=affine.get_affine_matrix().detach(),
        progress_bar=False,
    )
    deform.optimize()
    with torch.no_grad():
        coords = deform.get_warped_coordinates(fixed, moving)  # (1, z, y, x, 3): moving's [-1, 1] (x, y, z)
        labels = Image.load_file(spec["moving_labels"], device="cpu").array
        warped = F.grid_sample(labels, coords.to(labels.dtype), mode="nearest", align_corners=True)
    seconds, rss = time.perf_counter() - start, peak_rss_gb()
    np.save(out + "_labels.npy", np.rint(warped[0, 0].numpy().transpose(2, 1, 0)).astype(np.int16))
    # Normalised moving coordinates -> moving LPS mm, less each fixed voxel's own LPS position.
    c = coords[0].double().numpy().transpose(2, 1, 0, 3)
    t2p = moving_img.torch2phy[0].double().numpy()
    phys = c @ t2p[:3, :3].T + t2p[:3, 3]
    p2p = fixed_img.px2phy[0].double().numpy()
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in c.shape[:3]], indexing="ij"), -1)
    disp = phys - (idx @ p2p[:3, :3].T + p2p[:3, 3])
    np.save(out + "_warp.npy", (disp * np.array([-1.0, -1.0, 1.0])).astype(np.float32))
    return {"seconds": seconds, "peak_rss_gb": rss, "loss": loss}


RUNNERS = {"SyN": run_ants, "SyNCC": lambda spec, out: run_ants(spec, out, "SyNCC"), "greedy": run_greedy}
RUNNERS["fireants"] = run_fireants
