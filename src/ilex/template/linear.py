"""Linear templates (`ilex template -m rigid|affine`): a subject's sessions to their halfway space,
as FreeSurfer's `mri_robust_template` makes them for longitudinal work.

Each round is the template's round (`rounds.py`: one batch, its resume, its QC and its sums on
this machine or on Dask), with a method that answers with a matrix (`Method.yields_matrix`)
instead of a warp. Round 0 registers every image to the first one; round k = 1..K registers every
image to template k-1. Each registration gives a world matrix `T_i` (target RAS -> the image's
RAS, the pull-back map an LTA's inverse stores). The halfway space is where the sessions' maps
average to the identity: `F_i = T_i C` with `C` chosen so that the log-Euclidean mean of the
`F_i` is the identity (`halfway`: `C = expm(-mean_i logm T_i)`, repeated on the `F_i` until their
mean log vanishes, since matrices do not commute), so no session (not even the first) is
favoured. The template is the average of the images resampled through the `F_i` on the target's
grid (the first image's grid: `mri_robust_template` makes its own halfway grid; the first image's
keeps its voxel size and field of view, and the sessions of one head lie close to it).

Average: the median by default, as `mri_robust_template` (robust to a session with motion or an
intensity artefact, and it keeps edges that the mean blurs where sessions disagree by a voxel);
or the mean. The mean is the round's exact fixed-point sum of the moved images (`partial.py`).
The median needs every image's value at a voxel: each image's moved image is made where it was
registered (its share, a task on that worker on Dask) and written to the round's directory; the
client then reads them back one slab of slices at a time (memory: N images x one slab) and takes
each voxel's median (`np.median`: the middle value of the sorted N, the mean of the two middle ones
for even N). Neither depends on the order in which images finish, so both are the same bits
whatever the workers.

Without weights, a method that loads them (SynthMorph's `rigid`, `affine`) is stood in for by the
optimiser's affine stage (`OptimizeAffineMethod`); for `rigid`, its matrix is projected onto the
nearest rotation in world space (`rigid_part`). A method that loads none (a user's own) runs itself.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import numpy as np

from .._atomic import output_batch
from ..errors import IlexError
from .partial import IMAGE_SCALE, Partial, _resample_world, correlation, fixed, round_template
from .shape import head_mask, matrix_log, matrix_power, normalised, relative_change
from .shape import sharpen as sharpen_image

AVERAGES = ("median", "mean")
# The halfway correction is repeated until the mean log of the maps is below this (log units: radians,
# mm for translations); 3-4 repeats for sessions a few degrees apart (measured).
HALFWAY_TOLERANCE = 1e-12
HALFWAY_REPEATS = 50
# A median slab holds at most this many bytes of the images' values at once (float32).
MEDIAN_SLAB_BYTES = 256 * 2**20


def rigid_part(matrix: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The rigid world matrix nearest to the affine `matrix`: its linear part's rotation (polar
    decomposition, `U V^T` of its SVD), with the translation that keeps where `centre` (RAS mm,
    the head's centre) goes."""
    matrix = np.asarray(matrix, np.float64)
    u, _, vt = np.linalg.svd(matrix[:3, :3])
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:  # a reflection is no rotation: flip the least axis
        u[:, -1] *= -1
        rotation = u @ vt
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = matrix[:3, :3] @ centre + matrix[:3, 3] - rotation @ centre
    return out


def halfway(matrices: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """(C, the mean log's size left): the world matrix `C` such that the log-Euclidean mean of the
    maps `T_i C` is the identity, for `matrices` T_i (target RAS -> image RAS). `C` starts at
    `expm(-mean logm T_i)` and is corrected by the maps' own mean log until it is below
    `HALFWAY_TOLERANCE` (largest entry), at most `HALFWAY_REPEATS` times."""
    correction = np.eye(4)
    left = float("inf")
    for _ in range(HALFWAY_REPEATS):
        mean = np.mean([matrix_log(m @ correction) for m in matrices], axis=0)
        left = float(np.abs(mean).max())
        if left < HALFWAY_TOLERANCE:
            break
        correction = correction @ matrix_power(mean, -1.0)
    return correction, left


def linear_share(
    index: int,
    image_path: str,
    to_template: np.ndarray,
    to_target: np.ndarray | None,
    target: str,
    terms: int,
    counted: bool = True,
    moved: str | None = None,
    outputs: dict | None = None,
    template_path: str | None = None,
) -> Partial:
    """Image `index`'s share of a linear round: the image resampled on the `target`'s grid through
    the world map `to_template` (template RAS -> image RAS), and, with `to_target` (the map to the
    round's target, before the halfway correction), its similarity to the target. With `moved`
    (the median), the normalised moved image is written there (float32) and the share holds only
    its count; else (the mean) the share holds it in fixed point. `counted` False: the image adds
    nothing (left out of the average). With `outputs` (the last round: paths "moved", "lta",
    "itk", "h5"), the image's final files are written too, against the template at `template_path`."""
    from ..image.io import load_image, save_image

    t = round_template(target)
    image = load_image(image_path, what="image")
    on_template = _resample_world(image, to_template, t.affine, t.shape)
    if outputs is not None:
        write_session(outputs, image, on_template, to_template, t, template_path)
    if not counted:
        return Partial()
    values = normalised(on_template)
    similarities = {}
    if to_target is not None:
        on_target = normalised(_resample_world(image, to_target, t.affine, t.shape))
        similarities[index] = correlation(on_target, t.normalised, t.mask)
    zero = np.zeros((4, 4), np.int64)
    if moved is not None:
        save_image(moved, values, t.affine)
        return Partial(1, zero, None, None, similarities)
    return Partial(1, zero, None, fixed(values, IMAGE_SCALE, terms, image_path), similarities)


def write_session(outputs: dict, image, on_template: np.ndarray, to_template: np.ndarray, grid, template_path) -> None:
    """One session's final files: its image on the template grid (`moved`, its own intensities),
    and the matrix image RAS -> template RAS as an LTA (`lta`), ITK text (`itk`) and an ITK HDF5
    composite of that one affine (`h5`), all written together (`output_batch`)."""
    from ..image.io import save_image
    from ..image.itk_h5 import registration_composite, save_composite
    from ..image.matrix_io import save_matrix

    matrix = np.linalg.inv(np.asarray(to_template, np.float64))  # image RAS -> template RAS
    template = SimpleNamespace(affine=grid.affine, shape=grid.shape, path=template_path)
    os.makedirs(os.path.dirname(outputs["moved"]), exist_ok=True)
    with output_batch():
        save_image(outputs["moved"], np.asarray(on_template, np.float32), grid.affine)
        save_matrix(outputs["lta"], matrix, image, template, "lta")
        save_matrix(outputs["itk"], matrix, image, template, "itk")
        composite = registration_composite(matrix, (grid.affine, grid.shape), (image.affine, image.shape))
        save_composite(outputs["h5"], composite)


def median_image(paths: list[str], shape) -> np.ndarray:
    """The voxelwise median of the images at `paths` (uncompressed NIfTI, one grid of `shape`),
    read one slab of slices along the last axis at a time (at most `MEDIAN_SLAB_BYTES` of values
    at once), float32."""
    import nibabel as nib

    proxies = [nib.load(p).dataobj for p in paths]
    plane = int(shape[0]) * int(shape[1]) * 4 * len(paths)
    depth = max(1, MEDIAN_SLAB_BYTES // max(plane, 1))
    out = np.empty(tuple(int(n) for n in shape), np.float32)
    for z in range(0, int(shape[2]), depth):
        stack = np.stack([np.asarray(p[:, :, z : z + depth], np.float32) for p in proxies])
        out[:, :, z : z + depth] = np.median(stack, axis=0)
    return out


def session_files(folder, item_id: str) -> dict:
    directory = folder.path("images", item_id)
    return {
        "moved": os.path.join(directory, "moved.nii.gz"),
        "lta": os.path.join(directory, "affine.lta"),
        "itk": os.path.join(directory, "affine.txt"),
        "h5": os.path.join(directory, "affine.h5"),
    }


def linear_round(run, state: dict, k: int, rounds: int) -> None:
    """Round `k` of a linear template on the `Rounds` `run` (round 0 without an initial template:
    every image to the first; else every image to template k-1), committed as any round is."""
    from ..image.io import load_image, save_image
    from .rounds import _displacement_size, _lta_world, cluster_state

    settings, folder, inputs = run.settings, run.folder, run.inputs
    start = time.perf_counter()
    run._parallel = 0.0
    final = k > 0 and k == rounds  # round 0 is never the last (rounds >= 1)
    target = load_image(inputs[0].path if k == 0 else folder.round_template(k - 1), what="template")
    directory = folder.round_dir(k)
    method = settings.linear_method()
    budget = run.budget(k, method, target.data.size, len(inputs), final, warps=False)
    pairs = run.affine_pairs(directory, target.path, qc_round=k, final=final)
    if k == 0:
        pairs = pairs[1:]  # the first image is the target
    records = run.run(pairs, method, "linear")
    failed = run.report_failures(k, records)
    flags = run.report_flags(k, pairs, records)
    by_id = {r.pair: r for r in records}
    mask = head_mask(target.data)
    centre = target.affine[:3, :3] @ np.argwhere(mask).mean(axis=0) + target.affine[:3, 3]
    matrices: dict[str, np.ndarray] = {}
    if k == 0:
        matrices[inputs[0].id] = np.eye(4)
    for pair in pairs:
        record = by_id.get(pair.label)
        if record is None or record.status == "failed":
            continue
        matrix = _lta_world(pair.outputs["trans"], pair.moving, target)
        matrices[pair.label] = rigid_part(matrix, centre) if settings.rigid else matrix
    counted = [i.id for i in inputs if i.id in matrices and not (settings.exclude_flagged and i.id in flags)]
    if len(counted) < 2:
        raise IlexError(
            f"round {k}: fewer than 2 images registered and averaged; see the errors above (a rerun resumes this round)"
        )
    correction, _ = halfway([matrices[i] for i in counted])
    median = settings.average == "median"
    if median:
        os.makedirs(os.path.join(directory, "moved"), exist_ok=True)
    where = {r.pair: r.worker for r in records}
    template_path = folder.template
    with run.round_sum(budget) as summed:
        for index, item in enumerate(inputs):
            if item.id not in matrices:
                continue
            summed.add(
                linear_share,
                index,
                item.path,
                matrices[item.id] @ correction,
                None if (k == 0 and index == 0) else matrices[item.id],
                target.path,
                len(counted),
                item.id in counted,
                os.path.join(directory, "moved", f"{item.id}.nii") if median else None,
                session_files(folder, item.id) if final else None,
                template_path,
                worker=where.get(item.id),
            )
        partial = summed.result()
    reducing = time.perf_counter()
    if median:
        moved = [os.path.join(directory, "moved", f"{i}.nii") for i in counted]
        template = median_image(moved, target.shape)
    else:
        template = partial.mean_image()
    if settings.sharpen:
        template = sharpen_image(template)
    size = _displacement_size(np.linalg.inv(correction), target.affine, target.shape)[mask]
    row = {
        "round": k,
        "mean_displacement_mm": float(size.mean()),
        "max_displacement_mm": float(size.max()),
        "mean_similarity": partial.mean_similarity(),
        "template_change": None if k == 0 else relative_change(template, target.data, mask),
        "averaged": len(counted),
        "failed": " ".join(failed),
        "flagged": " ".join(flags),
        "seconds": 0.0,
        "peak_memory_gib": max((r.peak_memory_gib or 0.0 for r in records), default=None),
    }
    with output_batch():
        save_image(folder.round_template(k), template, target.affine)
        if final:
            save_image(folder.template, template, target.affine)
    if final:
        from ..batch import write_summary

        write_summary(records, folder.path("qc", "summary"), settings.batch(method))  # what ran
        errors = {r.pair: r.error for r in records if r.status == "failed"}
        state["images"] = {}
        for item in inputs:
            if item.id not in matrices:
                state["images"][item.id] = {"error": errors.get(item.id, "not registered")}
                continue
            files = session_files(folder, item.id)
            state["images"][item.id] = {
                "forward": None,
                "inverse": None,
                "moved": files["moved"],
                "affine": files["lta"],
                "itk": files["itk"],
                "h5": files["h5"],
                "matrix": np.linalg.inv(matrices[item.id] @ correction).tolist(),
                "folding_percent": None,
            }
    state.setdefault("linear", {})[str(k)] = {
        "correction": correction.tolist(),
        "maps": {i: (matrices[i] @ correction).tolist() for i in matrices},
    }
    row["seconds"] = time.perf_counter() - start
    row["reduce_seconds"] = time.perf_counter() - reducing
    row.update(cluster_state(records, run._parallel + summed.waited, row["seconds"], budget))
    folder.commit(state, k, row)
    run.announce(row, rounds)
    if final:
        run.study_page(records, method)
