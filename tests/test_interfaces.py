"""ilex.interfaces: Nipype's and Pydra's Registration and ApplyTransforms write what the CLI writes.

The workflows are the fMRIPrep pattern: register a subject's T1w (moving) onto a template (fixed),
then carry the template's atlas into the subject's space with the inverse composite, labels by
nearest neighbour. The subject is FSL's MNI152 and the template Colin27 with its AAL atlas, all
resampled to 4 mm so that a registration takes seconds. Each workflow runs on its engine's
process pool (Nipype's MultiProc, Pydra's cf); the same registration and resampling run through
`python -m ilex` give the reference files. The pytest process runs JAX, so the pools start their
workers by forkserver, never by fork (docs/pipelines.md, Fork safety): a fork of a process whose JAX
threads are running may deadlock, and a test that hangs would hang CI.
"""

import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from data import data_path

from ilex.errors import IlexError, OptionError
from ilex.interfaces import _commands

VOXEL_MM = 4.0


def _cli(*argv, env=None):
    subprocess.run([sys.executable, "-m", "ilex", *argv], check=True, capture_output=True, env=env)


def _private_cache(directory) -> dict:
    """The environment for a compilation cache of the tests' own: the reference run compiles, the
    workflows' runs read its programs (the same programs: the outputs do not change, only the time)."""
    return {"ILEX_NO_COMPILATION_CACHE": "", "ILEX_COMPILATION_CACHE_DIR": str(directory)}


# --- without images --------------------------------------------------------------------------------


def test_import_ilex_loads_no_engine_and_a_missing_one_is_named():
    """`import ilex` imports neither Nipype nor Pydra; without them, importing ilex.interfaces.nipype or
    .pydra fails with one line saying which extra to install."""
    code = "import sys, ilex, ilex.interfaces; print(sorted({'nipype', 'pydra'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    for engine in ("nipype", "pydra"):
        code = f"import sys; sys.modules['{engine}'] = None; import ilex.interfaces.{engine}"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        assert out.returncode == 1
        assert out.stderr.strip().splitlines()[-1] == (
            f"ImportError: ilex.interfaces.{engine} needs {'Nipype' if engine == 'nipype' else 'Pydra 0.x'}: "
            f"pip install ilex[{engine}]"
        )


def test_nipype_interfaces_build_the_cli_commands(tmp_path):
    """Registration: FIXED and MOVING in ilex's order (moving first), the transforms as .h5 both ways, the
    options as their flags; ApplyTransforms: ANTs' interpolation names as ilex's, one transform only."""
    from nipype.interfaces.base import traits

    from ilex.interfaces.nipype import ApplyTransforms, Registration

    names = ("fixed.nii.gz", "moving.nii.gz", "atlas.nii.gz", "i.h5", "fmask.nii.gz", "mmask.nii.gz")
    fixed, moving, atlas, init, fmask, mmask = (tmp_path / n for n in names)
    for f in (fixed, moving, atlas, init, fmask, mmask):
        f.write_bytes(b"")
    reg = Registration(
        fixed_image=str(fixed),
        moving_image=str(moving),
        initial_moving_transform=str(init),
        method="optimize",
        hyper=0.3,
        num_threads=2,
        similarity="mi",
        levels=[4, 2],
        fixed_image_mask=str(fmask),
        moving_image_mask=str(mmask),
        mask_threshold=0.5,
    )
    words = reg.cmdline.split()
    assert words[:4] == ["ilex", "register", str(moving), str(fixed)]
    for flag, value in (
        ("-m", "optimize"),
        ("-r", "0.3"),
        ("-i", str(init)),
        ("-j", "2"),
        ("--similarity", "mi"),
        ("--mask-fixed", str(fmask)),
        ("--mask-moving", str(mmask)),
        ("--mask-threshold", "0.5"),
    ):
        assert words[words.index(flag) + 1] == value
    assert words[words.index("--levels") + 1 : words.index("--levels") + 3] == ["4", "2"]
    assert words[words.index("-t") + 1].endswith("transformComposite.h5")
    assert words[words.index("-T") + 1].endswith("transformInverseComposite.h5")
    assert "-O" not in words and words[words.index("-o") + 1].endswith("transformWarped.nii.gz")
    assert "--mask-fixed" not in Registration(fixed_image=str(fixed), moving_image=str(moving)).cmdline

    labels = ApplyTransforms(
        input_image=str(atlas), reference_image=str(moving), transforms=str(init), interpolation="NearestNeighbor"
    )
    words = labels.cmdline.split()
    assert words[:3] == ["ilex", "apply", str(init)] and words[words.index("-m") + 1] == "nearest"
    assert words[words.index("--reference") + 1] == str(moving) and words[4].endswith("atlas_trans.nii.gz")
    with pytest.raises(traits.TraitError):
        labels.inputs.interpolation = "BSpline"  # ilex has linear and nearest only
    labels.inputs.transforms = [str(init), str(init)]
    with pytest.raises(OptionError, match="transforms: ilex applies one transform file, got 2"):
        labels.cmdline  # noqa: B018 - the property builds the command


def test_pydra_task_passes_the_masks_on(tmp_path, monkeypatch):
    """The Pydra task's function builds the same command as the Nipype interface, masks included."""
    from fileformats.generic import File

    from ilex.interfaces import pydra as ilex_pydra

    ran = []
    monkeypatch.setattr(_commands, "run_ilex", lambda argv, threads=None: ran.append(list(argv)))
    monkeypatch.chdir(tmp_path)
    fixed, moving, fmask, mmask = (tmp_path / n for n in ("f.nii.gz", "m.nii.gz", "fmask.nii.gz", "mmask.nii.gz"))
    for f in (fixed, moving, fmask, mmask):
        f.write_bytes(b"")
    images = {"fixed_image": File(fixed), "moving_image": File(moving), "method": "optimize"}
    ilex_pydra.registration(**images, fixed_image_mask=File(fmask), moving_image_mask=File(mmask), mask_threshold=2.0)
    (argv,) = ran
    for flag, value in (("--mask-fixed", fmask), ("--mask-moving", mmask), ("--mask-threshold", "2.0")):
        assert argv[argv.index(flag) + 1] == str(value)
    ilex_pydra.registration(**images)
    assert not {"--mask-fixed", "--mask-moving", "--mask-threshold"} & set(ran[1])


def test_a_failing_node_reports_the_cli_line(tmp_path, monkeypatch):
    """A registration the CLI refuses fails the node with the CLI's one-line error, which names the file."""
    from ilex.interfaces.nipype import Registration

    (tmp_path / "fixed.nii.gz").write_text("not an image")
    (tmp_path / "moving.nii.gz").write_text("not an image either")
    reg = Registration(
        fixed_image=str(tmp_path / "fixed.nii.gz"), moving_image=str(tmp_path / "moving.nii.gz"), method="optimize"
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(IlexError, match=r"ilex register: error: .*moving\.nii\.gz"):
        reg.run()
    assert not (tmp_path / "transformComposite.h5").exists()


# --- the workflows on real images --------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The 4 mm images and the CLI's files for them: the registration (-t/-T .h5, -o, --qc) and the atlas
    carried onto the subject's grid with the inverse composite."""
    from nibabel.processing import resample_to_output

    d = tmp_path_factory.mktemp("study")
    env = {**os.environ, **_private_cache(d / "jax_cache")}  # module scope: before conftest's monkeypatch
    inputs = {}
    for name, source, order in (
        ("subject", "fsl_mni152_t1_2mm.nii.gz", 1),
        ("template", "colin27_t1.nii.gz", 1),
        ("atlas", "colin27_aal.nii.gz", 0),
    ):
        inputs[name] = str(d / f"{name}.nii.gz")
        nib.save(
            resample_to_output(nib.load(data_path(source)), voxel_sizes=(VOXEL_MM,) * 3, order=order), inputs[name]
        )
    ref = d / "cli"
    ref.mkdir()
    _cli(
        "register",
        inputs["subject"],
        inputs["template"],
        "-m",
        "optimize",
        "-r",
        "0.5",
        "-j",
        "1",
        "-t",
        str(ref / "Composite.h5"),
        "-T",
        str(ref / "InverseComposite.h5"),
        "-o",
        str(ref / "Warped.nii.gz"),
        "--qc",
        str(ref / "qc"),
        "-q",
        env=env,
    )
    _cli(
        "apply",
        str(ref / "InverseComposite.h5"),
        inputs["atlas"],
        str(ref / "atlas_in_subject.nii.gz"),
        "-m",
        "nearest",
        "-t",
        "int32",
        "--reference",
        inputs["subject"],
        "-q",
        env=env,
    )
    return inputs, ref


@pytest.fixture
def study_env(study, monkeypatch):
    """The study, with the workflows' processes reading the reference run's compilation cache."""
    inputs, ref = study
    for key, value in _private_cache(ref.parent / "jax_cache").items():
        monkeypatch.setenv(key, value)
    return inputs, ref


@contextlib.contextmanager
def _no_fork_of_running_jax():
    """Run the block with JAX's backend started here (as in a pipeline script that uses JAX) and fail
    if anything forked this process meanwhile: JAX warns at every fork once its backend runs."""
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()  # the backend, and its threads, are running
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    forks = [str(w.message) for w in caught if "os.fork() was called" in str(w.message)]
    assert not forks, forks[0]


def _same_as_cli(ref, inputs, composite, inverse, warped, qc_dir, labels):
    """The files a workflow wrote are the CLI's: the transforms and the label map byte for byte (ilex
    writes reproducibly and the registration is deterministic on one thread), the moved image and the QC
    figures equal but for the report's times; the label map holds atlas labels only (nearest neighbour)."""
    for ours, theirs in ((composite, "Composite.h5"), (inverse, "InverseComposite.h5")):
        assert Path(ours).read_bytes() == (ref / theirs).read_bytes(), theirs
    assert Path(labels).read_bytes() == (ref / "atlas_in_subject.nii.gz").read_bytes()
    np.testing.assert_array_equal(nib.load(warped).get_fdata(), nib.load(ref / "Warped.nii.gz").get_fdata())
    ours, theirs = (json.loads((Path(q) / "qc.json").read_text()) for q in (qc_dir, ref / "qc"))
    for key in ("moving", "fixed"):  # the same images, by another path
        assert os.path.samefile(ours.pop(key), theirs.pop(key))
    assert ours == theirs
    assert ours["verdict"]["passed"], ours["verdict"]["failed"]  # the example is a good registration
    assert os.path.isfile(os.path.join(qc_dir, "report.html"))
    carried = np.asarray(nib.load(labels).dataobj)
    assert carried.dtype == np.int32 and carried.shape == nib.load(inputs["subject"]).shape
    atlas_labels = set(np.unique(np.asarray(nib.load(inputs["atlas"]).dataobj)).tolist())
    assert set(np.unique(carried).tolist()) <= atlas_labels
    assert len(np.unique(carried)) > 100  # AAL's 116 regions, and background, mostly survive 4 mm


@pytest.mark.realdata
@pytest.mark.slow
def test_nipype_workflow_on_multiproc(study_env, tmp_path):
    """Registration then ApplyTransforms of the inverse composite, on Nipype's MultiProc plugin."""
    from nipype import Node, Workflow

    from ilex.interfaces.nipype import ApplyTransforms, Registration

    inputs, ref = study_env
    wf = Workflow("atlas_to_subject", base_dir=str(tmp_path))
    wf.config["execution"].update({"remove_unnecessary_outputs": False, "poll_sleep_duration": 0.2})
    reg = Node(
        Registration(moving_image=inputs["subject"], fixed_image=inputs["template"], method="optimize", num_threads=1),
        name="register",
    )
    labels = Node(
        ApplyTransforms(
            input_image=inputs["atlas"],
            reference_image=inputs["subject"],
            interpolation="NearestNeighbor",
            output_type="int32",
        ),
        name="atlas",
    )
    wf.connect(reg, "inverse_composite_transform", labels, "transforms")
    with _no_fork_of_running_jax():
        graph = wf.run(plugin="MultiProc", plugin_args={"n_procs": 2, "mp_context": "forkserver"})
    results = {node.name: node.result.outputs for node in graph.nodes()}
    out = results["register"]
    assert out.forward_transforms == [out.composite_transform]
    _same_as_cli(
        ref,
        inputs,
        out.composite_transform,
        out.inverse_composite_transform,
        out.warped_image,
        out.qc,
        results["atlas"].output_image,
    )


@pytest.mark.realdata
@pytest.mark.slow
def test_pydra_workflow_on_cf(study_env, tmp_path):
    """The same two tasks in a pydra.Workflow, on Pydra's concurrent-futures worker."""
    import pydra

    from ilex.interfaces.pydra import ApplyTransforms, Registration

    inputs, ref = study_env
    wf = pydra.Workflow(name="atlas_to_subject", input_spec=list(inputs), cache_dir=str(tmp_path))
    for key, value in inputs.items():
        setattr(wf.inputs, key, value)
    wf.add(Registration(name="register", moving_image=wf.lzin.subject, fixed_image=wf.lzin.template, method="optimize"))
    wf.add(
        ApplyTransforms(
            name="atlas",
            input_image=wf.lzin.atlas,
            reference_image=wf.lzin.subject,
            transforms=wf.register.lzout.inverse_composite_transform,
            interpolation="NearestNeighbor",
            output_type="int32",
        )
    )
    names = ("composite_transform", "inverse_composite_transform", "warped_image", "qc")
    wf.set_output([(n, getattr(wf.register.lzout, n)) for n in names] + [("labels", wf.atlas.lzout.output_image)])
    # Pydra 0.25's cf worker takes no context: its pool uses the process's default start method.
    previous = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("forkserver", force=True)
    try:
        with _no_fork_of_running_jax(), pydra.Submitter(plugin="cf", n_procs=2) as submitter:
            submitter(wf)
    finally:
        multiprocessing.set_start_method(previous, force=True)
    result = wf.result()
    assert not result.errored
    out = result.output
    _same_as_cli(
        ref,
        inputs,
        out.composite_transform,
        out.inverse_composite_transform,
        out.warped_image,
        out.qc,
        out.labels,
    )


@pytest.mark.realdata
@pytest.mark.slow
def test_masks_reach_the_registration(study_env, tmp_path, monkeypatch):
    """A node with a cost-function mask registers with it: the report names the mask, and the transform is
    not the unmasked one. The mask is the template itself above a tenth of its range (mask_threshold)."""
    from ilex.interfaces.nipype import Registration

    inputs, ref = study_env
    template = np.asarray(nib.load(inputs["template"]).dataobj, np.float64)
    threshold = float(template.min() + 0.1 * (template.max() - template.min()))
    reg = Registration(
        moving_image=inputs["subject"],
        fixed_image=inputs["template"],
        method="optimize",
        fixed_image_mask=inputs["template"],
        mask_threshold=threshold,
    )
    monkeypatch.chdir(tmp_path)
    out = reg.run().outputs
    assert json.loads((Path(out.qc) / "qc.json").read_text())["masks"] == {"fixed": inputs["template"]}
    assert Path(out.composite_transform).read_bytes() != (ref / "Composite.h5").read_bytes()
    with pytest.raises(IlexError, match="cannot use a cost-function mask"):  # the CLI's refusal, before weights
        Registration(
            moving_image=inputs["subject"], fixed_image=inputs["template"], fixed_image_mask=inputs["template"]
        ).run()


def test_dense_warp_reference_must_be_its_grid(tmp_path):
    """A dense warp fixes its grid: ApplyTransforms refuses a reference on another grid, naming it."""
    warp = tmp_path / "warp.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 1, 3), np.float32), np.eye(4)), warp)
    reference = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 7), np.float32), np.eye(4)), reference)
    with pytest.raises(OptionError, match="other.nii.gz: not the grid the warp"):
        _commands.check_reference(str(warp), str(reference))
    same = tmp_path / "same.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.eye(4)), same)
    _commands.check_reference(str(warp), str(same))


def test_parallel_nodes_claim_different_cpus():
    """Two nodes of one thread each, side by side, run on two different CPUs (`ilex register -j 1` alone
    would put both on the first); asking for every CPU claims none."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        pytest.skip("needs 2 CPUs")
    with _commands.claimed_cpus(1) as first, _commands.claimed_cpus(1) as second:
        assert len(first) == len(second) == 1 and first != second and first | second <= set(available)
    with _commands.claimed_cpus(1) as again:  # released at the end of the block
        assert again == first
    with _commands.claimed_cpus(len(available)) as everything:
        assert everything is None
