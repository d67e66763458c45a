"""Pydra tasks (Pydra's 0.x API, `pydra.mark.task`): `Registration` and `ApplyTransforms`.

The same inputs, outputs and files as `ilex.interfaces.nipype`'s interfaces of the same names,
through the same command lines (`interfaces._commands`: `ilex register` and `ilex apply` run in
a child process with this interpreter, in the task's output directory). Each is a function
task: call it with its inputs (and `name=`), add it to a `pydra.Workflow`, run it with any
worker, `cf` included. `registration` and `apply_transforms` are the plain functions they wrap
(run them in the directory the files should land in). Needs `pip install ilex[pydra]`.

    import pydra
    from ilex.interfaces.pydra import ApplyTransforms, Registration
    wf = pydra.Workflow(name="atlas", input_spec=["t1w", "template", "atlas"])
    wf.add(Registration(name="reg", moving_image=wf.lzin.t1w, fixed_image=wf.lzin.template, method="optimize"))
    wf.add(ApplyTransforms(name="labels", input_image=wf.lzin.atlas, reference_image=wf.lzin.t1w,
                           transforms=wf.reg.lzout.inverse_composite_transform, interpolation="NearestNeighbor"))
"""

import os

try:
    import pydra
    from fileformats.generic import Directory, File
except ImportError:  # pragma: no cover - the message is the point
    raise ImportError("ilex.interfaces.pydra needs Pydra 0.x: pip install ilex[pydra]") from None

from ..registration.methods import DEFAULT_METHOD
from . import _commands

_REGISTRATION_OUTPUTS = {
    "composite_transform": File,
    "inverse_composite_transform": File,
    "warped_image": File | None,
    "inverse_warped_image": File | None,
    "qc": Directory | None,
    "qc_report": File | None,
}


@pydra.mark.annotate({"return": _REGISTRATION_OUTPUTS})
def registration(
    fixed_image: File,
    moving_image: File,
    initial_moving_transform: File | None = None,
    method: str = DEFAULT_METHOD,
    hyper: float = 0.5,
    steps: int | None = None,
    extent: int | None = None,
    weights: list[str] | None = None,
    num_threads: int = 1,
    gpu: bool = False,
    mid_space: bool = False,
    similarity: str | None = None,
    levels: list[int] | None = None,
    iterations: list[int] | None = None,
    fixed_image_mask: File | None = None,
    moving_image_mask: File | None = None,
    mask_threshold: float | None = None,
    output_transform_prefix: str = "transform",
    output_warped_image: bool | str = True,
    output_inverse_warped_image: bool | str = False,
    qc: bool = True,
):
    """`ilex register` as a Pydra task, where pydra-ants' Registration stands: ITK HDF5 composites in
    both directions, `composite_transform` (moving -> fixed) and `inverse_composite_transform`, and
    `warped_image`, `inverse_warped_image`, `qc` (the report's directory), `qc_report` (its page).
    The inputs are `ilex.interfaces.nipype.Registration`'s."""
    argv, files = _commands.register_command(
        os.fspath(fixed_image),
        os.fspath(moving_image),
        initial_moving_transform=os.fspath(initial_moving_transform) if initial_moving_transform else None,
        method=method,
        hyper=hyper,
        steps=steps,
        extent=extent,
        weights=weights or (),
        num_threads=num_threads,
        gpu=gpu,
        mid_space=mid_space,
        similarity=similarity,
        levels=levels or (),
        iterations=iterations or (),
        fixed_image_mask=os.fspath(fixed_image_mask) if fixed_image_mask else None,
        moving_image_mask=os.fspath(moving_image_mask) if moving_image_mask else None,
        mask_threshold=mask_threshold,
        output_transform_prefix=output_transform_prefix,
        output_warped_image=output_warped_image,
        output_inverse_warped_image=output_inverse_warped_image,
        qc=qc,
        directory=os.getcwd(),
    )
    _commands.run_ilex(argv, threads=num_threads)
    report = os.path.join(files["qc"], "report.html") if files["qc"] else None
    return (
        files["composite_transform"],
        files["inverse_composite_transform"],
        files["warped_image"],
        files["inverse_warped_image"],
        files["qc"],
        report,
    )


@pydra.mark.annotate({"return": {"output_image": File}})
def apply_transforms(
    input_image: File,
    reference_image: File,
    transforms: File | list[File],
    interpolation: str = "Linear",
    default_value: float = 0.0,
    output_image: str | None = None,
    output_type: str = "float32",
    force: bool = False,
):
    """`ilex apply` as a Pydra task: `input_image` through one transform file onto `reference_image`'s
    grid, `interpolation` "Linear" or "NearestNeighbor"; output `output_image`. The inputs are
    `ilex.interfaces.nipype.ApplyTransforms`'s."""
    if isinstance(transforms, str | os.PathLike):
        transforms = [transforms]
    argv, output = _commands.apply_command(
        os.fspath(input_image),
        os.fspath(reference_image),
        [os.fspath(t) for t in transforms],
        interpolation=interpolation,
        default_value=default_value,
        output_image=output_image,
        output_type=output_type,
        force=force,
        directory=os.getcwd(),
    )
    _commands.check_reference(argv[1], os.fspath(reference_image))
    _commands.run_ilex(argv)
    return output


# The tasks. Pydra pickles the plain functions into its workers; module-level names let them go by
# reference, as `ilex.interfaces.pydra.registration`, rather than by value.
Registration = pydra.mark.task(registration)
ApplyTransforms = pydra.mark.task(apply_transforms)
