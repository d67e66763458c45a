"""Writing a `Registration`'s outputs: one function for `ilex register`, `ilex batch` and the Python API.

Outputs are named by kind, after `ilex register`'s long options:

| kind        | flag   | what                                                              |
|-------------|--------|-------------------------------------------------------------------|
| `out_moving`| `-o`   | moving image resampled onto the fixed grid                         |
| `out_fixed` | `-O`   | fixed image resampled onto the moving grid                         |
| `trans`     | `-t`   | forward warp, on the fixed grid (RAS displacements, mm)            |
| `inverse`   | `-T`   | inverse warp, on the moving grid                                   |
| `qc`        | `--qc` | a directory: jacobian.nii.gz, checkerboard.png, qc.json            |
| `out_dir`   | `-d`   | a directory: the network inputs inp_1.mgz (moving), inp_2.mgz      |

Every file of one call lands together when all are written, or none does (`output_batch`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from .._atomic import _check_parent, output_batch
from ..errors import OptionError

OUTPUT_KINDS = {"out_moving": "-o", "out_fixed": "-O", "trans": "-t", "inverse": "-T", "qc": "--qc", "out_dir": "-d"}
_DIRECTORY_KINDS = ("qc", "out_dir")


def output_files(outputs: Mapping[str, str | os.PathLike | None]) -> list[tuple[str, str]]:
    """(kind, file) of every file `outputs` will produce, directories expanded; unset kinds left out.

    Raises `OptionError` for an unknown kind.
    """
    files = []
    for kind, path in outputs.items():
        if kind not in OUTPUT_KINDS:
            raise OptionError(f"unknown output {kind!r}; one of {', '.join(OUTPUT_KINDS)}")
        if not path:
            continue
        path = os.fspath(path)
        if kind == "qc":
            from ..qc.report import QC_FILES

            files += [(kind, os.path.join(path, name)) for name in QC_FILES]
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


def check_outputs(outputs: Mapping[str, str | os.PathLike | None], inputs: Mapping[str, str | os.PathLike] = {}) -> None:
    """Refuse, before any work, outputs that would overwrite an input (`inputs`: name -> path) or
    each other, or whose directory is missing or not writable (`OptionError`/`FileProblem`).
    `qc` may name a directory that does not exist yet (its parent must); `out_dir` must exist.
    """
    real_inputs = {os.path.realpath(p): name for name, p in inputs.items() if p}
    for kind in _DIRECTORY_KINDS:
        path = outputs.get(kind)
        if not path:
            continue
        path = os.fspath(path)
        if os.path.exists(path) and not os.path.isdir(path):
            raise OptionError(f"{OUTPUT_KINDS[kind]} {path}: exists and is not a directory")
        if kind == "out_dir" and not os.path.isdir(path):
            raise OptionError(f"-d {path}: no such directory")
        if not os.path.isdir(path):
            _check_parent(path)
    seen: dict[str, str] = {}
    for kind, path in output_files(outputs):
        flag = OUTPUT_KINDS[kind]
        real = os.path.realpath(path)
        if real in real_inputs:
            raise OptionError(f"{flag} {path}: the output would overwrite the {real_inputs[real]} image")
        if real in seen:
            raise OptionError(f"{flag} {path}: the same file is also given to {seen[real]}")
        seen[real] = flag
        if os.path.isdir(os.path.dirname(os.path.abspath(path))):
            _check_parent(path)


def write_outputs(result, outputs: Mapping[str, str | os.PathLike | None], *, warp_format: str = "freesurfer",
                  report=None, settings: Mapping | None = None) -> list[str]:
    """Write `result`'s (a `Registration`) outputs named in `outputs` (kind -> path, see the module
    docstring; None or '' skips a kind); returns the files written.

    `report` is the `QualityReport` when the caller already computed it (else computed for `qc`);
    `settings` (e.g. hyper, steps, extent) go into qc.json. `warp_format` is "freesurfer" or "itk".
    All files land together at the end, or none does. Raises `OptionError` for an unknown kind.
    """
    from ..image.io import save_image
    from ..image.warp_io import Warp, save_warp

    files = output_files(outputs)  # validates the kinds
    path = {kind: os.fspath(p) for kind, p in outputs.items() if p}
    moving, fixed = result.moving, result.fixed
    with output_batch():
        moved = result.moved() if "out_moving" in path or "qc" in path else None
        if "qc" in path:
            from ..qc import quality_report, write_qc

            write_qc(path["qc"], result, report if report is not None else quality_report(result), dict(settings or {}), moved)
        if "out_moving" in path:
            save_image(path["out_moving"], moved, fixed.affine)
        if "out_fixed" in path:
            save_image(path["out_fixed"], result.fixed_moved(), moving.affine)
        if "trans" in path:
            save_warp(path["trans"], Warp(result.forward, fixed.affine, moving.affine, moving.shape), warp_format)
        if "inverse" in path:
            save_warp(path["inverse"], Warp(result.inverse, moving.affine, fixed.affine, fixed.shape), warp_format)
        if "out_dir" in path:
            # Each input with its own network geometry, as mri_synthmorph writes them.
            geometries = (moving.affine @ result.space.net_to_mov, fixed.affine @ result.space.net_to_fix)
            for k, (data, geometry) in enumerate(zip(result.inputs, geometries), 1):
                save_image(os.path.join(path["out_dir"], f"inp_{k}.mgz"), np.asarray(data), geometry)
    return [f for _, f in files]
