"""Writing a `Registration`'s outputs: one function for `ilex register`, `ilex batch` and the Python API.

Outputs are named by kind, after `ilex register`'s long options:

| kind        | flag   | what                                                              |
|-------------|--------|-------------------------------------------------------------------|
| `out_moving`| `-o`   | moving image resampled onto the fixed grid                         |
| `out_fixed` | `-O`   | fixed image resampled onto the moving grid                         |
| `trans`     | `-t`   | forward warp, on the fixed grid (RAS displacements, mm)            |
| `inverse`   | `-T`   | inverse warp, on the moving grid                                   |
| `qc`        | `--qc` | a directory: jacobian.nii.gz, checkerboard.png, qc.json            |
| `out_dir`   | `-d`   | a directory (created): the network inputs inp_1.mgz, inp_2.mgz     |

`trans`/`inverse` named `.h5` are ITK HDF5 composite transforms, for every method (an affine, then for
warps a displacement field; `image.itk_h5`), as `antsRegistration --write-composite-transform` writes.
For matrix results (`-m affine`, `-m rigid`), `trans`/`inverse` named `.lta` are FreeSurfer LTAs
and `.txt`/`.tfm` ITK text transforms (`warp_format="itk"` makes every matrix ITK text); any other
name gets the matrix as a dense warp. Every file of one call lands together when all are written,
or none does (`output_batch`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from .._atomic import check_parent, output_batch
from ..errors import OptionError
from ..image.io import IMAGE_SUFFIXES

OUTPUT_KINDS = {"out_moving": "-o", "out_fixed": "-O", "trans": "-t", "inverse": "-T", "qc": "--qc", "out_dir": "-d"}
# A kind with no flag or batch column: `qc`'s directory with qc.json alone (figures and verdict, no
# pictures or page), what `ilex template`'s intermediate rounds judge their registrations by.
_INTERNAL_KINDS = {"qc_figures": "the QC figures' directory"}
_DIRECTORY_KINDS = ("qc", "out_dir", "qc_figures")
_IMAGE_KINDS = ("out_moving", "out_fixed")


def output_files(outputs: Mapping[str, str | os.PathLike | None]) -> list[tuple[str, str]]:
    """(kind, file) of every file `outputs` will produce, directories expanded; unset kinds left out.

    Raises `OptionError` for an unknown kind.
    """
    files = []
    for kind, path in outputs.items():
        if kind not in OUTPUT_KINDS and kind not in _INTERNAL_KINDS:
            raise OptionError(f"unknown output {kind!r}; one of {', '.join(OUTPUT_KINDS)}")
        if not path:
            continue
        path = os.fspath(path)
        if kind == "qc":
            from ..qc.report import QC_FILES

            files += [(kind, os.path.join(path, name)) for name in QC_FILES]
        elif kind == "qc_figures":
            from ..qc.report import QC_FIGURES

            files += [(kind, os.path.join(path, name)) for name in QC_FIGURES]
        elif kind == "out_dir":
            files += [(kind, os.path.join(path, f"inp_{k}.mgz")) for k in (1, 2)]
        else:
            files.append((kind, path))
    return files


def outputs_complete(outputs: Mapping[str, str | os.PathLike | None]) -> bool:
    """Whether every file of `outputs` exists (and there is at least one): the pair is done.

    Files land together at the end of `write_outputs`, so a pair killed while writing has
    either all of them or, at worst, some from an earlier run; both are rerun unless all exist.
    """
    files = output_files(outputs)
    return bool(files) and all(os.path.isfile(f) for _, f in files)


def check_outputs(
    outputs: Mapping[str, str | os.PathLike | None], inputs: Mapping[str, str | os.PathLike] = {}
) -> None:
    """Refuse, before any work, outputs that would overwrite an input (`inputs`: name -> path) or
    each other, images (`out_moving`, `out_fixed`) of an unknown format, and outputs whose
    directory cannot be made or written (`OptionError`/`FileProblem`). Every output's directory
    may be missing: it is created when the outputs are written (as mri_synthmorph creates `-d`),
    so its nearest existing ancestor must be a writable directory.
    """
    real_inputs = {os.path.realpath(p): name for name, p in inputs.items() if p}
    for kind in _DIRECTORY_KINDS:
        if outputs.get(kind):
            check_creatable({**OUTPUT_KINDS, **_INTERNAL_KINDS}[kind], os.fspath(outputs[kind]))
    seen: dict[str, str] = {}
    for kind, path in output_files(outputs):
        flag = {**OUTPUT_KINDS, **_INTERNAL_KINDS}[kind]
        real = os.path.realpath(path)
        if real in real_inputs:
            raise OptionError(f"{flag} {path}: the output would overwrite the {real_inputs[real]} image")
        if real in seen:
            raise OptionError(f"{flag} {path}: the same file is also given to {seen[real]}")
        seen[real] = flag
        if kind in _IMAGE_KINDS and not path.lower().endswith(IMAGE_SUFFIXES):
            raise OptionError(f"{flag} {path}: unknown image format; name it {', '.join(IMAGE_SUFFIXES)}")
        if kind not in _DIRECTORY_KINDS:  # every output's directory is created, as -d's
            check_creatable(flag, os.path.dirname(os.path.abspath(path)))


def check_creatable(option: str, directory: str) -> None:
    """A directory that exists and is writable, or whose nearest existing ancestor is a writable directory."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise OptionError(f"{option} {directory}: exists and is not a directory")
    if os.path.isdir(directory):
        check_parent(os.path.join(directory, "x"))
        return
    ancestor = os.path.abspath(directory)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK):
        raise OptionError(f"{option} {directory}: cannot create it ({ancestor} is not a writable directory)")


def check_transform_outputs(
    outputs: Mapping[str, str | os.PathLike | None],
    method,
    header_only: bool = False,
    warp_format: str = "freesurfer",
) -> None:
    """Refuse transform names and `-H` that `method` (a name as `-m` takes it, or a `Method`)
    cannot produce (a warp method has no matrix)."""
    from ..image.itk_h5 import is_itk_h5
    from ..image.matrix_io import matrix_format
    from .methods import method_facts

    facts = method_facts(method)
    is_matrix, method = facts.yields_matrix, facts.name
    if header_only and not is_matrix:
        raise OptionError(
            f"header-only output is for methods that give a matrix (affine, rigid), not {method}",
            argument="header_only",
        )
    for kind in ("trans", "inverse"):
        path = outputs.get(kind)
        if not path:
            continue
        flag, fmt = OUTPUT_KINDS[kind], matrix_format(path)
        if is_itk_h5(path):
            continue  # an ITK composite holds a matrix, or a matrix and a field: any method
        if fmt and not is_matrix:
            raise OptionError(f"{flag} {path}: -m {method} gives a warp, not a matrix; name it .nii.gz or .mgz")
        if fmt == "lta" and warp_format == "itk":
            raise OptionError(f"{flag} {path}: --warp-format itk writes ITK text transforms; name it .txt or .tfm")
        warps = (".nii.gz", ".nii") if warp_format == "itk" else IMAGE_SUFFIXES
        if not fmt and not os.fspath(path).lower().endswith(warps):
            matrices = " (or .lta, .txt, .tfm for a matrix)" if is_matrix else ""
            raise OptionError(
                f"{flag} {path}: unknown warp format; name it {', '.join(warps)}{matrices}"
                + (" (the ITK warp format is NIfTI only)" if warp_format == "itk" else "")
            )


def write_outputs(
    result,
    outputs: Mapping[str, str | os.PathLike | None],
    *,
    warp_format: str = "freesurfer",
    report=None,
    settings: Mapping | None = None,
    header_only: bool = False,
) -> list[str]:
    """Write `result`'s (a `Registration`) outputs named in `outputs` (kind -> path, see the module
    docstring; None or '' skips a kind); returns the files written.

    `report` is the `QualityReport` when the caller already computed it (else computed for `qc`);
    `settings` (e.g. hyper, steps, extent) go into qc.json. `warp_format` is "freesurfer" or "itk".
    `header_only` (`-H`, matrix results): `out_moving`/`out_fixed` keep their voxels and get the
    moved voxel-to-RAS matrix. All files land together at the end, or none does. Raises
    `OptionError` for an unknown kind.
    """
    from ..image.io import save_image
    from ..image.itk_h5 import is_itk_h5, registration_composite, save_composite
    from ..image.matrix_io import matrix_format, save_matrix
    from ..image.warp_io import Warp, save_warp

    files = output_files(outputs)  # validates the kinds
    path = {kind: os.fspath(p) for kind, p in outputs.items() if p}
    moving, fixed = result.moving, result.fixed
    if "out_dir" in path and result.inputs is None:
        raise OptionError(
            "the network inputs were not kept; register with keep_inputs=True",
            argument="out_dir",
            value=path["out_dir"],
        )
    if "out_dir" in path:
        os.makedirs(path["out_dir"], exist_ok=True)  # as mri_synthmorph; its files land with the rest
    for _, file in files:  # every output's directory, as -d's (its files land with the rest)
        os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
    with output_batch():
        qc = [kind for kind in ("qc", "qc_figures") if kind in path]
        moved = np.asarray(result.moved().dataobj) if "out_moving" in path or qc else None
        if qc:
            from ..qc import quality_report, write_qc

            report = report if report is not None else quality_report(result)
        for kind in qc:
            write_qc(path[kind], result, report, {**(settings or {}), "warp_format": warp_format}, moved, kind == "qc")
        if "out_moving" in path:
            if header_only:
                save_image(path["out_moving"], moving.data, result.moved_header())
            else:
                save_image(path["out_moving"], moved, fixed.affine)
        if "out_fixed" in path:
            if header_only:
                save_image(path["out_fixed"], fixed.data, result.fixed_header())
            else:
                save_image(path["out_fixed"], np.asarray(result.fixed_moved().dataobj), moving.affine)
        for kind, forward in (("trans", True), ("inverse", False)):
            if kind not in path:
                continue
            if is_itk_h5(path[kind]):
                ras = result.affine if forward else np.linalg.inv(result.affine)
                grids = ((fixed.affine, fixed.shape), (moving.affine, moving.shape))
                field = None if result.is_matrix else result.forward if forward else result.inverse
                reference, source = grids if forward else grids[::-1]
                save_composite(path[kind], registration_composite(ras, reference, source, field))
            elif result.is_matrix and matrix_format(path[kind]):
                ras = result.affine if forward else np.linalg.inv(result.affine)
                src, dst = (moving, fixed) if forward else (fixed, moving)
                save_matrix(path[kind], ras, src, dst, "itk" if warp_format == "itk" else None)
            elif forward:
                save_warp(path[kind], Warp(result.forward, fixed.affine, moving.affine, moving.shape), warp_format)
            else:
                save_warp(path[kind], Warp(result.inverse, moving.affine, fixed.affine, fixed.shape), warp_format)
        if "out_dir" in path:
            # Each input with its own network geometry, as mri_synthmorph writes them.
            geometries = (moving.affine @ result.space.net_to_mov, fixed.affine @ result.space.net_to_fix)
            for k, (data, geometry) in enumerate(zip(result.inputs, geometries, strict=False), 1):
                save_image(os.path.join(path["out_dir"], f"inp_{k}.mgz"), np.asarray(data), geometry)
    return [f for _, f in files]
