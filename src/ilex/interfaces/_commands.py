"""The `ilex register` and `ilex apply` command lines that the Nipype and Pydra interfaces run.

Both interfaces go through here, and through the command line itself (run as `python -m ilex`
in a child process, with the interpreter that runs the workflow): one registration path, the
CLI's checks, outputs and errors, and a fresh process per node (JAX is multithreaded and does not
survive the fork that Nipype's and Pydra's process pools may use). Output files are named as
`antsRegistration --write-composite-transform` names them, with the prefix in front:
`{prefix}Composite.h5`, `{prefix}InverseComposite.h5`, `{prefix}Warped.nii.gz`, and the QC
report in `{prefix}qc/`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Sequence

from ..errors import IlexError, OptionError
from ..registration.methods import DEFAULT_METHOD

# ANTs' names for the interpolations ilex has, and ilex apply's words for them.
INTERPOLATIONS = {"Linear": "linear", "NearestNeighbor": "nearest"}
OUTPUT_TYPES = ("float32", "uint8", "uint16", "int16", "int32")


def register_command(
    fixed_image: str,
    moving_image: str,
    *,
    initial_moving_transform: str | None = None,
    method: str = DEFAULT_METHOD,
    hyper: float = 0.5,
    steps: int | None = None,
    extent: int | None = None,
    weights: Sequence[str] = (),
    num_threads: int | None = None,
    gpu: bool = False,
    mid_space: bool = False,
    similarity: str | None = None,
    levels: Sequence[int] = (),
    iterations: Sequence[int] = (),
    fixed_image_mask: str | None = None,
    moving_image_mask: str | None = None,
    mask_threshold: float | None = None,
    output_transform_prefix: str = "transform",
    output_warped_image: bool | str = True,
    output_inverse_warped_image: bool | str = False,
    qc: bool = True,
    directory: str = ".",
) -> tuple[list[str], dict[str, str | None]]:
    """The `ilex register` arguments for these inputs (note the order: ilex takes MOVING FIXED, as
    mri_synthmorph does) and the absolute paths of the outputs they write, under `directory`:
    `composite_transform` (-t, moving -> fixed, on the fixed grid), `inverse_composite_transform`
    (-T), `warped_image` (-o) and `inverse_warped_image` (-O) or None, `qc` (--qc) or None.
    `output_warped_image` and `output_inverse_warped_image` are True for the default name, a file
    name, or False for none, as in `nipype.interfaces.ants.Registration`. `fixed_image_mask`,
    `moving_image_mask` and `mask_threshold` are the cost-function masks' `--mask-fixed`,
    `--mask-moving` and `--mask-threshold` (-m optimize only: the CLI refuses them for the others)."""

    def out(name: str) -> str:
        return os.path.abspath(os.path.join(directory, name))

    outputs: dict[str, str | None] = {
        "composite_transform": out(f"{output_transform_prefix}Composite.h5"),
        "inverse_composite_transform": out(f"{output_transform_prefix}InverseComposite.h5"),
        "warped_image": _named(output_warped_image, f"{output_transform_prefix}Warped.nii.gz", out),
        "inverse_warped_image": _named(
            output_inverse_warped_image, f"{output_transform_prefix}InverseWarped.nii.gz", out
        ),
        "qc": out(f"{output_transform_prefix}qc") if qc else None,
    }
    argv = ["register", os.fspath(moving_image), os.fspath(fixed_image), "-m", method, "-r", repr(float(hyper))]
    argv += ["-t", outputs["composite_transform"], "-T", outputs["inverse_composite_transform"]]
    for flag, key in (("-o", "warped_image"), ("-O", "inverse_warped_image"), ("--qc", "qc")):
        if outputs[key]:
            argv += [flag, outputs[key]]
    if initial_moving_transform:
        argv += ["-i", os.fspath(initial_moving_transform)]
    if mid_space:
        argv.append("-M")
    for flag, value in (("-n", steps), ("-e", extent), ("-j", num_threads), ("--similarity", similarity)):
        if value is not None:
            argv += [flag, str(value)]
    for flag, path in (("--mask-fixed", fixed_image_mask), ("--mask-moving", moving_image_mask)):
        if path:
            argv += [flag, os.fspath(path)]
    if mask_threshold is not None:
        argv += ["--mask-threshold", repr(float(mask_threshold))]
    for w in weights:
        argv += ["-w", os.fspath(w)]
    for flag, values in (("--levels", levels), ("--iterations", iterations)):
        if values:
            argv += [flag, *(str(int(v)) for v in values)]
    if gpu:
        argv.append("-g")
    return [*argv, "-q"], outputs


def _named(value: bool | str, default: str, out) -> str | None:
    if value is True:
        return out(default)
    if not value:
        return None
    return out(value)


def apply_command(
    input_image: str,
    reference_image: str | None,
    transforms: Sequence[str] | str,
    *,
    interpolation: str = "Linear",
    default_value: float = 0.0,
    output_image: str | None = None,
    output_type: str = "float32",
    force: bool = False,
    directory: str = ".",
) -> tuple[list[str], str]:
    """The `ilex apply` arguments that resample `input_image` through the one transform file in
    `transforms` onto `reference_image`'s grid, and the output's absolute path (default
    `{input name}_trans.nii.gz` in `directory`, as `nipype.interfaces.ants.ApplyTransforms` names it).
    `interpolation` takes ANTs' names: "Linear" or "NearestNeighbor". The reference is passed for
    matrices and .h5 composites; a dense warp fixes its own grid, and `reference_image` must be it
    (checked by `check_reference`). Raises `OptionError` for several transforms or an interpolation
    ilex does not have."""
    transforms = [transforms] if isinstance(transforms, str | os.PathLike) else list(transforms)
    if len(transforms) != 1:
        raise OptionError(
            f"ilex applies one transform file, got {len(transforms)}; register with ilex to get one composite "
            "(.h5) per direction",
            argument="transforms",
        )
    if interpolation not in INTERPOLATIONS:
        raise OptionError(f"must be one of {', '.join(INTERPOLATIONS)}", argument="interpolation", value=interpolation)
    if output_type not in OUTPUT_TYPES:
        raise OptionError(f"must be one of {', '.join(OUTPUT_TYPES)}", argument="output_type", value=output_type)
    transform = os.fspath(transforms[0])
    if output_image is None:
        name = os.path.basename(os.fspath(input_image))
        stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else os.path.splitext(name)[0]
        output_image = f"{stem}_trans.nii.gz"
    output = os.path.abspath(os.path.join(directory, output_image))
    argv = ["apply", transform, os.fspath(input_image), output, "-m", INTERPOLATIONS[interpolation]]
    argv += ["-f", repr(float(default_value)), "-t", output_type]
    if reference_image is not None and not _is_dense_warp(transform):
        argv += ["--reference", os.fspath(reference_image)]
    if force:
        argv.append("--force")
    return [*argv, "-q"], output


def _is_dense_warp(path: str) -> bool:
    from ..image.itk_h5 import is_itk_h5
    from ..image.matrix_io import matrix_format

    return not is_itk_h5(path) and matrix_format(path) is None and not path.lower().endswith(".mat")


def check_reference(transform: str, reference_image: str | None) -> None:
    """A dense warp fixes the grid it resamples onto: refuse a `reference_image` on another grid
    (1e-3 mm, as `ilex apply` compares grids), rather than write an image that is not on it."""
    if reference_image is None or not _is_dense_warp(transform):
        return
    import nibabel as nib
    import numpy as np

    from ..errors import ImageFileError

    try:  # headers only
        warp, reference = nib.load(transform), nib.load(os.fspath(reference_image))
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as e:
        raise ImageFileError(transform, f"cannot read the warp's or reference's header ({e})") from None
    if tuple(reference.shape[:3]) != tuple(warp.shape[:3]) or not np.allclose(reference.affine, warp.affine, atol=1e-3):
        raise OptionError(
            f"{reference_image}: not the grid the warp {transform} resamples onto; a dense warp fixes its own grid "
            "(pass its target image, or an .h5 composite with any reference)",
            argument="reference_image",
        )


def run_ilex(argv: Sequence[str], cwd: str | None = None, threads: int | None = None) -> None:
    """Run `python -m ilex ARGV` with this interpreter; on failure raise `IlexError` carrying the
    command's one-line error (its last stderr line) and exit status. `threads` (the node's
    `num_threads`): the child runs on that many CPUs that no other node started here holds
    (`claimed_cpus`), so that nodes run side by side, each on its own CPUs."""
    with claimed_cpus(threads) as cpus:
        previous = os.sched_getaffinity(0) if cpus else None
        if cpus:
            os.sched_setaffinity(0, cpus)  # this thread's: the child inherits it
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "ilex", *argv],
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        finally:
            if previous:
                os.sched_setaffinity(0, previous)
        _, stderr = child.communicate()
    if child.returncode != 0:
        lines = [line for line in stderr.splitlines() if line.strip()]
        message = lines[-1] if lines else f"exit status {child.returncode}"
        raise IlexError(f"{message} (exit status {child.returncode}: {command_line(argv)})")


@contextlib.contextmanager
def claimed_cpus(count: int | None):
    """`count` CPUs of this process's set, claimed for as long as the block runs: each with an
    exclusive lock on a file in the temporary directory (`ilex-cpus-UID/cpuN.lock`; the system
    releases it when the process ends), free ones first, then the first others when too few are
    free. Yields the set, or None where no choice is needed (no count, or all the CPUs asked) or
    possible (no `sched_setaffinity`). `ilex register -j N` keeps the first N CPUs it is given:
    without the claims, parallel nodes of `num_threads=1` would all run on the first CPU."""
    if count is None or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    available = sorted(os.sched_getaffinity(0))
    if count >= len(available):
        yield None
        return
    import fcntl
    import tempfile

    directory = os.path.join(tempfile.gettempdir(), f"ilex-cpus-{os.getuid()}")
    os.makedirs(directory, exist_ok=True)
    held = []
    try:
        for cpu in available:
            if len(held) == count:
                break
            lock = open(os.path.join(directory, f"cpu{cpu}.lock"), "a")  # noqa: SIM115 - held past this loop
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.close()
                continue
            held.append((cpu, lock))
        chosen = [cpu for cpu, _ in held]
        chosen += [cpu for cpu in available if cpu not in chosen][: count - len(chosen)]
        yield set(chosen)
    finally:
        for _, lock in held:
            lock.close()


def command_line(argv: Sequence[str]) -> str:
    """The command as a user would type it (for logs and Nipype's `cmdline`)."""
    import shlex

    return "ilex " + " ".join(shlex.quote(str(a)) for a in argv)
