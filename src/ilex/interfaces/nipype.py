"""Nipype interfaces: `Registration` and `ApplyTransforms`, shaped like `nipype.interfaces.ants`'s.

Each node runs the `ilex` command line (`ilex register`, `ilex apply`) in a child process with
this interpreter (`interfaces._commands`): the same registration, checks and files as the CLI.
`Registration` writes ITK HDF5 composites as `antsRegistration --write-composite-transform` does,
so its `composite_transform` and `inverse_composite_transform` plug into `ApplyTransforms` here
or in `nipype.interfaces.ants`. `num_threads` is the name Nipype's MultiProc plugin reads to
reserve processors for a node, as for ANTs. Needs `pip install ilex[nipype]`.

    from nipype import Node
    from ilex.interfaces.nipype import Registration
    reg = Node(Registration(method="optimize", hyper=0.5, num_threads=4), name="t1_to_mni")
"""

from __future__ import annotations

import os

try:
    from nipype.interfaces.base import (
        BaseInterface,
        BaseInterfaceInputSpec,
        Directory,
        File,
        InputMultiObject,
        TraitedSpec,
        isdefined,
        traits,
    )
except ImportError:  # pragma: no cover - the message is the point
    raise ImportError("ilex.interfaces.nipype needs Nipype: pip install ilex[nipype]") from None

from ..registration.methods import DEFAULT_METHOD
from . import _commands


def _given(inputs, name: str, default=None):
    value = getattr(inputs, name)
    return value if isdefined(value) else default


class RegistrationInputSpec(BaseInterfaceInputSpec):
    fixed_image = File(exists=True, mandatory=True, desc="image to register onto (ilex register's FIXED)")
    moving_image = File(exists=True, mandatory=True, desc="image to register (ilex register's MOVING)")
    initial_moving_transform = File(
        exists=True,
        desc="initial affine, moving to fixed (-i): an affine-only ITK .h5 composite, ITK/ANTs .txt/.tfm/.mat or "
        "FreeSurfer .lta",
    )
    method = traits.Str(
        DEFAULT_METHOD,
        usedefault=True,
        desc="-m: joint, deform, affine, rigid (SynthMorph; need weights) or optimize (no weights), or "
        "package.module:Class",
    )
    hyper = traits.Range(0.0, 1.0, 0.5, usedefault=True, desc="-r: regularisation λ in [0, 1]; higher is smoother")
    steps = traits.Int(desc="-n: integration steps (ilex's default 7)")
    extent = traits.Int(desc="-e: network cube side in mm, a multiple of 32 (ilex's default 256)")
    weights = InputMultiObject(
        traits.Str, desc="-w: weights (bundle directory, Hugging Face repo id or FreeSurfer .h5), joint: affine first"
    )
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="-j: CPU threads (what MultiProc reserves)")
    gpu = traits.Bool(False, usedefault=True, nohash=True, desc="-g: run on the GPU")
    mid_space = traits.Bool(False, usedefault=True, desc="-M: split the initial affine between the images")
    similarity = traits.Enum("lncc", "mi", "auto", desc="--similarity, -m optimize only (ilex's default auto)")
    levels = traits.List(traits.Int, desc="--levels, -m optimize only: deformable levels in voxels, coarse to fine")
    iterations = traits.List(traits.Int, desc="--iterations, -m optimize only: most iterations per level")
    fixed_image_mask = File(
        exists=True,
        desc="--mask-fixed, -m optimize only: cost-function mask of the fixed image (NIfTI/MGZ, any grid), as ANTs' "
        "-x: the similarity is measured where it is non-zero",
    )
    moving_image_mask = File(
        exists=True, desc="--mask-moving, -m optimize only: cost-function mask of the moving image"
    )
    mask_threshold = traits.Float(
        desc="--mask-threshold: masks hold 0 and 1; with T, any values, the voxels above T being the mask"
    )
    output_transform_prefix = traits.Str("transform", usedefault=True, desc="prefix of the output file names")
    output_warped_image = traits.Either(
        traits.Bool, File, default=True, usedefault=True, desc="-o: True (the default name), a file name, or False"
    )
    output_inverse_warped_image = traits.Either(
        traits.Bool, File, default=False, usedefault=True, desc="-O: True, a file name, or False (the default)"
    )
    qc = traits.Bool(True, usedefault=True, desc="--qc: write the quality-control report")


class RegistrationOutputSpec(TraitedSpec):
    composite_transform = File(exists=True, desc="moving -> fixed ITK HDF5 composite (-t), applies to moving images")
    inverse_composite_transform = File(exists=True, desc="fixed -> moving ITK HDF5 composite (-T)")
    forward_transforms = traits.List(File(exists=True), desc="[composite_transform], as ANTs' Registration lists it")
    reverse_transforms = traits.List(File(exists=True), desc="[inverse_composite_transform]")
    warped_image = File(desc="the moving image on the fixed grid (-o)")
    inverse_warped_image = File(desc="the fixed image on the moving grid (-O)")
    qc = Directory(desc="the QC directory: report.html, qc.json, jacobian.nii.gz, checkerboard.png")
    qc_report = File(desc="the QC page, report.html")


class Registration(BaseInterface):
    """`ilex register` as a Nipype interface, where `nipype.interfaces.ants.Registration` stands.

    One method and one λ instead of ANTs' per-stage lists; outputs are ITK HDF5 composites in
    both directions (ANTs' `write_composite_transform=True`).
    """

    input_spec = RegistrationInputSpec
    output_spec = RegistrationOutputSpec

    def _command(self):
        i = self.inputs
        return _commands.register_command(
            i.fixed_image,
            i.moving_image,
            initial_moving_transform=_given(i, "initial_moving_transform"),
            method=i.method,
            hyper=i.hyper,
            steps=_given(i, "steps"),
            extent=_given(i, "extent"),
            weights=_given(i, "weights", []),
            num_threads=i.num_threads,
            gpu=i.gpu,
            mid_space=i.mid_space,
            similarity=_given(i, "similarity"),
            levels=_given(i, "levels", []),
            iterations=_given(i, "iterations", []),
            fixed_image_mask=_given(i, "fixed_image_mask"),
            moving_image_mask=_given(i, "moving_image_mask"),
            mask_threshold=_given(i, "mask_threshold"),
            output_transform_prefix=i.output_transform_prefix,
            output_warped_image=i.output_warped_image,
            output_inverse_warped_image=i.output_inverse_warped_image,
            qc=i.qc,
            directory=os.getcwd(),
        )

    @property
    def cmdline(self) -> str:
        """The `ilex register` command this node runs (in its working directory)."""
        return _commands.command_line(self._command()[0])

    def _run_interface(self, runtime):
        argv, _ = self._command()
        _commands.run_ilex(argv, cwd=runtime.cwd, threads=self.inputs.num_threads)
        return runtime

    def _list_outputs(self):
        _, files = self._command()
        outputs = self._outputs().get()
        outputs.update({k: v for k, v in files.items() if v})
        outputs["forward_transforms"] = [files["composite_transform"]]
        outputs["reverse_transforms"] = [files["inverse_composite_transform"]]
        if files["qc"]:
            outputs["qc_report"] = os.path.join(files["qc"], "report.html")
        return outputs


class ApplyTransformsInputSpec(BaseInterfaceInputSpec):
    input_image = File(exists=True, mandatory=True, desc="image to resample")
    reference_image = File(
        exists=True, mandatory=True, desc="image whose grid the output takes (for a dense warp: the warp's own)"
    )
    transforms = InputMultiObject(
        File(exists=True),
        mandatory=True,
        desc="one transform file: an ITK .h5 composite (ilex's or antsRegistration's), a warp, .lta or .txt",
    )
    interpolation = traits.Enum(
        "Linear", "NearestNeighbor", usedefault=True, desc="ANTs' names; NearestNeighbor for label maps"
    )
    default_value = traits.Float(0.0, usedefault=True, desc="value outside the image (-f)")
    output_image = traits.Str(desc="output file name (default: the input's name with _trans)")
    output_type = traits.Enum(*_commands.OUTPUT_TYPES, usedefault=True, desc="output data type (-t; int32 for labels)")
    force = traits.Bool(
        False, usedefault=True, desc="--force: apply to an image on another grid than the transform records"
    )


class ApplyTransformsOutputSpec(TraitedSpec):
    output_image = File(exists=True, desc="the resampled image")


class ApplyTransforms(BaseInterface):
    """`ilex apply` as a Nipype interface, where `nipype.interfaces.ants.ApplyTransforms` stands:
    one transform file (ilex composes a registration into one .h5 per direction), Linear or
    NearestNeighbor interpolation."""

    input_spec = ApplyTransformsInputSpec
    output_spec = ApplyTransformsOutputSpec

    def _command(self):
        i = self.inputs
        return _commands.apply_command(
            i.input_image,
            i.reference_image,
            i.transforms,
            interpolation=i.interpolation,
            default_value=i.default_value,
            output_image=_given(i, "output_image"),
            output_type=i.output_type,
            force=i.force,
            directory=os.getcwd(),
        )

    @property
    def cmdline(self) -> str:
        """The `ilex apply` command this node runs (in its working directory)."""
        return _commands.command_line(self._command()[0])

    def _run_interface(self, runtime):
        argv, _ = self._command()
        _commands.check_reference(argv[1], self.inputs.reference_image)
        _commands.run_ilex(argv, cwd=runtime.cwd)
        return runtime

    def _list_outputs(self):
        outputs = self._outputs().get()
        outputs["output_image"] = self._command()[1]
        return outputs
