"""The final round's outputs per image: its warps, moved image and affine, made to point at the
final template (the last round's registrations composed with its shape update)."""

from __future__ import annotations

import contextvars
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .shape import AffineFit, ShapeUpdate, head_mask
from .state import TemplateFolder


@dataclass(frozen=True)
class ImageGrid:
    """An image's grid (what its transforms' files record), read from its header alone."""

    affine: np.ndarray
    shape: tuple[int, int, int]
    path: str


def image_grid(path: str) -> ImageGrid:
    import nibabel as nib

    header = nib.load(path)  # checked by check_inputs before any work
    return ImageGrid(np.asarray(header.affine, np.float64), tuple(int(n) for n in header.shape[:3]), path)


def final_outputs(
    folder: TemplateFolder,
    inputs,
    warp_format: str,
    done,
    records,
    update: ShapeUpdate,
    previous,
    template,
    client=None,
    resources: dict | None = None,
) -> dict:
    """Each image's warps, moved image and affine, made to point at the final template (the last
    round's registrations composed with its shape update); written with the template. `done`:
    (input, pair) of the images registered in the last round, `previous` its template (the image
    registered to), `template` the new one's voxels. An image's files are written on other
    threads, one file each, while the next image's transforms are made (one image after another
    took 2.0 s each at 1 mm, half of it gzip); memory stays that of about two images.
    With a Dask `client`, each image's outputs are a task (declaring `resources`) on the worker
    that registered it (`final_image`), and the client only gathers their paths and figures.
    Returns {id: paths and figures, or {"error": why}} for every input."""
    from ..image.io import Image

    if client is not None:
        out = _on_cluster(client, resources, folder, warp_format, done, records, update, previous, template)
        errors = {r.pair: r.error for r in records if r.status == "failed"}
        return {**out, **{item.id: {"error": errors[item.id]} for item in inputs if item.id in errors}}

    mask = head_mask(template)
    template_image = Image(template, previous.affine, folder.template)
    fit = AffineFit(previous.affine, mask)
    out, writing = {}, []
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="ilex-template-write") as writer:
        for item, pair in done:
            made = _final_transforms(item, pair, update, previous, fit)
            for written in writing:  # the image before has landed before this one is let out
                written.result()
            entry, jobs = _final_files(folder, warp_format, made, previous, template_image)
            out.update(entry)
            # Each in a copy of this context, so that the files join the caller's output batch.
            writing = [writer.submit(contextvars.copy_context().run, job) for job in jobs]
        for written in writing:
            written.result()
    errors = {r.pair: r.error for r in records if r.status == "failed"}
    for item in inputs:
        if item.id in errors:
            out[item.id] = {"error": errors[item.id]}
    return out


def _final_transforms(item, pair, update: ShapeUpdate, previous, fit: AffineFit) -> dict:
    from ..image.io import load_image
    from ..image.warp_io import load_warp
    from ..transforms.jacobian import folding_fraction, jacobian_determinant

    image = image_grid(item.path)
    forward = update.forward(load_warp(pair.outputs["trans"]).displacement)
    return {
        "item": item,
        "image": image,
        "forward": forward,
        "inverse": update.inverse(load_warp(pair.outputs["inverse"]).displacement, image.affine),
        "moved": update.image(load_image(pair.outputs["out_moving"], what="moved image", check_values=False).data),
        "matrix": np.linalg.inv(fit(forward)),  # image RAS -> template RAS
        "folding": 100.0 * float(folding_fraction(jacobian_determinant(forward, previous.affine))),
    }


def _final_files(
    folder: TemplateFolder, fmt: str, made: dict, previous, template_image
) -> tuple[dict, list[Callable[[], None]]]:
    """({id: paths and figures}, the jobs that write the files)."""
    from ..image.io import save_image
    from ..image.matrix_io import save_matrix
    from ..image.warp_io import Warp, save_warp

    item, image = made["item"], made["image"]
    directory = folder.path("images", item.id)
    os.makedirs(directory, exist_ok=True)
    warps = ".h5" if fmt == "h5" else ".nii.gz"
    paths = {
        "forward": os.path.join(directory, "warp" + warps),
        "inverse": os.path.join(directory, "inverse" + warps),
        "moved": os.path.join(directory, "moved.nii.gz"),
        "affine": os.path.join(directory, "affine.lta" if fmt == "freesurfer" else "affine.txt"),
    }
    if fmt == "h5":
        from ..image.itk_h5 import registration_composite, save_composite

        # ITK composites (an affine, then a displacement field), as `register -t/-T out.h5` writes them:
        # forward on the template grid (image RAS -> template RAS the matrix), inverse on the image's.
        template_grid, image_grid_ = (previous.affine, previous.shape), (image.affine, image.shape)
        forward_file = registration_composite(made["matrix"], template_grid, image_grid_, made["forward"])
        inverse_file = registration_composite(
            np.linalg.inv(made["matrix"]), image_grid_, template_grid, made["inverse"]
        )
        write_forward = functools.partial(save_composite, paths["forward"], forward_file)
        write_inverse = functools.partial(save_composite, paths["inverse"], inverse_file)
    else:
        forward = Warp(made["forward"], previous.affine, image.affine, image.shape)
        inverse = Warp(made["inverse"], image.affine, previous.affine, previous.shape)
        write_forward = functools.partial(save_warp, paths["forward"], forward, fmt)
        write_inverse = functools.partial(save_warp, paths["inverse"], inverse, fmt)

    def moved_and_affine():
        save_image(paths["moved"], made["moved"], previous.affine)
        save_matrix(paths["affine"], made["matrix"], image, template_image, "lta" if fmt == "freesurfer" else "itk")

    jobs = [write_forward, write_inverse, moved_and_affine]
    return {item.id: {**paths, "matrix": made["matrix"].tolist(), "folding_percent": made["folding"]}}, jobs


def _on_cluster(client, resources, folder, fmt, done, records, update: ShapeUpdate, previous, template) -> dict:
    import uuid

    import distributed

    # The update's figures (not its derived grids: each worker makes them once) and the template, sent once.
    spec = {
        "key": uuid.uuid4().hex,
        "mean_log": update.mean_log,
        "residual": update.residual,
        "alpha": update.alpha,
        "affine": np.asarray(previous.affine, np.float64),
        "shape": tuple(previous.shape),
    }
    spec, template = client.scatter([spec, np.asarray(template, np.float32)])
    where = {r.pair: r.worker for r in records}
    futures = []
    for item, pair in done:
        placed = {"workers": [where[item.id]], "allow_other_workers": True} if where.get(item.id) else {}
        futures.append(
            client.submit(
                final_image, folder.outdir, fmt, item, pair, spec, template, resources=resources, pure=False, **placed
            )
        )
    out = {}
    for future in distributed.as_completed(futures):
        out.update(future.result())
    return {item.id: out[item.id] for item, _ in done}  # in the images' order


# A worker's shape update for the last round, made once from the figures the client sent (the same bits
# as the client's: the same functions of the same numbers), with the affine fit of the new template.
_final_cache: dict = {}


def final_image(outdir: str, fmt: str, item, pair, spec: dict, template: np.ndarray) -> dict:
    """One image's final outputs (a Dask task): as `final_outputs` makes them in one process,
    written together (`output_batch`). `spec`: the shape update's mean log-affine, mean residual,
    step, and the template grid's affine and shape; `template`: the new template's voxels.
    Returns {id: paths and figures}."""
    import threading

    from .._atomic import output_batch
    from ..image.io import Image
    from .shape import MeanTransform

    lock = _final_cache.setdefault("lock", threading.Lock())
    with lock:
        if _final_cache.get("key") != spec["key"]:
            mean = MeanTransform(spec["affine"], None, fit=False)
            mean.count, mean.log_sum, mean.residual_sum = 1, spec["mean_log"], spec["residual"]
            _final_cache.update(
                key=spec["key"],
                update=ShapeUpdate(mean, spec["shape"], spec["alpha"]),
                fit=AffineFit(spec["affine"], head_mask(template)),
            )
        update, fit = _final_cache["update"], _final_cache["fit"]
    folder = TemplateFolder(outdir)
    previous = _Grid(spec["affine"], spec["shape"])  # the template grid, for the files' geometry
    made = _final_transforms(item, pair, update, previous, fit)
    entry, jobs = _final_files(folder, fmt, made, previous, Image(template, spec["affine"], folder.template))
    with output_batch():
        for job in jobs:
            job()
    return entry


@dataclass(frozen=True)
class _Grid:
    affine: np.ndarray
    shape: tuple[int, int, int]
