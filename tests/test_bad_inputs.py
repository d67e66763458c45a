"""Every bad input: exit status 1, one line on stderr naming the file or option, no output touched.

Each case runs the CLI in a directory that already holds a precious `moved.nii.gz` (an earlier
result the user wants to keep) and asks for `-o moved.nii.gz -t warp.nii.gz --qc qc`; afterwards
the directory must be exactly as it was: no new file, no temporary left over, nothing modified.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import h5py
import nibabel as nib
import numpy as np
import pytest
from conftest import fixture_path

import ilex
from ilex.cli.main import main

pytestmark = pytest.mark.slow  # the full pipeline or many processes: CI runs it, `-m "not slow"` skips it

E32 = fixture_path("net_e32_uniform.h5")
SHAPE = (40, 48, 40)


def _head(shape=SHAPE, seed=0):
    """A smooth ellipsoidal 'head' with texture, and a 4 mm affine centred on the origin."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    inside = (grid**2).sum(0) < 0.64
    data = (inside * (100 + 20 * np.sin(6 * grid[0]) * np.cos(5 * grid[1])) + rng.normal(0, 2, shape)).astype(
        np.float32
    )
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = -2.0 * (np.asarray(shape) - 1)
    return data, affine


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data, affine = _head()
    _save("moving.nii.gz", data, affine)
    _save("fixed.nii.gz", _head(seed=1)[0], affine)
    _save("moved.nii.gz", np.ones((4, 4, 4), np.float32), np.eye(4))  # an earlier result, to be kept
    return tmp_path


def _snapshot(directory):
    """Every file's bytes and every directory under `directory`, by relative path."""
    state = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            state[os.path.relpath(os.path.join(root, name), directory) + "/"] = b""
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                state[os.path.relpath(os.path.join(root, name), directory)] = f.read()
    return state


def _fails(capsys, directory, argv, *expected):
    before = _snapshot(directory)
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 1, (rc, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], lines[0]
    assert _snapshot(directory) == before, "an output was created or modified"
    return lines[0]


OUTPUTS = ["-m", "deform", "-o", "moved.nii.gz", "-t", "warp.nii.gz", "--qc", "qc", "-w", E32, "-e", "32"]


def _register(moving="moving.nii.gz", fixed="fixed.nii.gz", *extra):
    return ["register", moving, fixed, *OUTPUTS, *extra]


def _register_with_weights(path):
    """`_register()` with `-w path` instead of the fixture network (-w repeats for -m joint)."""
    argv = _register()
    argv[argv.index(E32)] = path
    return argv


# --- unusable image files -----------------------------------------------------------------


def test_missing_file(work, capsys):
    _fails(capsys, work, _register("nope.nii.gz"), "nope.nii.gz", "no such moving image")


def test_directory_instead_of_file(work, capsys):
    os.mkdir("adir.nii.gz")
    _fails(capsys, work, _register(fixed="adir.nii.gz"), "adir.nii.gz", "cannot read")


def _deny_as_root(monkeypatch, name):
    # Root reads and writes whatever the mode bits say; there, make os.access say what a user would see.
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(
            os,
            "access",
            lambda p, mode, **k: False if os.path.basename(os.path.abspath(p)) == name else real(p, mode, **k),
        )


def test_unreadable_file(work, capsys, monkeypatch):
    shutil.copy("moving.nii.gz", "locked.nii.gz")
    os.chmod("locked.nii.gz", 0)
    _deny_as_root(monkeypatch, "locked.nii.gz")
    _fails(capsys, work, _register("locked.nii.gz"), "locked.nii.gz", "permission denied")


def test_not_an_image(work, capsys):
    with open("notes.nii.gz", "w") as f:
        f.write("these are my notes, not an image\n")
    _fails(capsys, work, _register("notes.nii.gz"), "notes.nii.gz")


def test_truncated_nifti(work, capsys):
    data = pathlib.Path("moving.nii.gz").read_bytes()
    with open("cut.nii.gz", "wb") as f:
        f.write(data[: len(data) // 2])
    _fails(capsys, work, _register("cut.nii.gz"), "cut.nii.gz", "truncated or corrupt")


@pytest.mark.parametrize("whole", [True, False])
def test_compressed_images_read_whole_or_streamed_alike(work, monkeypatch, whole):
    # Small .nii.gz/.mgz files are inflated whole (ISA-L), large ones streamed by nibabel: the same
    # voxels, the same one-line error for a truncated file, and bytes after the gzip stream
    # accepted (as nibabel's streaming always did), either way.
    from ilex.errors import ImageFileError
    from ilex.image import compressed
    from ilex.image.io import load_image

    expected = np.asarray(nib.load("moving.nii.gz").dataobj, np.float32)
    monkeypatch.setattr(compressed, "WHOLE_FILE_BYTES", 2**40 if whole else 16)
    np.testing.assert_array_equal(load_image("moving.nii.gz").data, expected)
    nib.save(nib.MGHImage(expected, np.eye(4)), "moving.mgz")
    np.testing.assert_array_equal(load_image("moving.mgz").data, expected)
    data = pathlib.Path("moving.nii.gz").read_bytes()
    pathlib.Path("cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageFileError, match="truncated or corrupt"):
        load_image("cut.nii.gz")
    pathlib.Path("trailing.nii.gz").write_bytes(data + b"some bytes after the stream")
    np.testing.assert_array_equal(load_image("trailing.nii.gz").data, expected)


def test_four_frames(work, capsys):
    data, affine = _head()
    _save("bold.nii.gz", np.stack([data, data], -1), affine)
    _fails(capsys, work, _register("bold.nii.gz"), "bold.nii.gz", "2 frames")


def test_one_frame_is_fine(work, capsys):
    data, affine = _head()
    _save("single.nii.gz", data[..., None], affine)
    from ilex.image.io import load_image

    assert load_image("single.nii.gz").shape == SHAPE


def test_two_dimensional(work, capsys):
    _save("slice.nii.gz", _head()[0][:, :, 20], np.eye(4))
    _fails(capsys, work, _register(fixed="slice.nii.gz"), "slice.nii.gz", "2-D")


def test_infinite_voxels(work, capsys):
    # NaN voxels are SPM's background and are taken as such (test_first_use); Inf is refused.
    data, affine = _head()
    data[3, 4, 5] = np.inf
    _save("holes.nii.gz", data, affine)
    _fails(capsys, work, _register("holes.nii.gz"), "holes.nii.gz", "1 voxel is Inf")


def test_only_nan_voxels(work, capsys):
    data, affine = _head()
    _save("void.nii.gz", np.full_like(data, np.nan), affine)
    _fails(capsys, work, _register("void.nii.gz"), "void.nii.gz", "every voxel is NaN")


def test_constant_image(work, capsys):
    _save("flat.nii.gz", np.full(SHAPE, 7, np.float32), _head()[1])
    _fails(capsys, work, _register(fixed="flat.nii.gz"), "flat.nii.gz", "constant")


def _with_srow_x(path, row):
    # Patch the sform's first row in the saved bytes (offset 280): nibabel rewrites its header from
    # the affine on save and refuses to decompose such affines into a qform, so it cannot write them.
    img = nib.Nifti1Image(_head()[0], _head()[1])
    img.header.set_qform(None, code=0)
    nib.save(img, path)
    raw = bytearray(pathlib.Path(path).read_bytes())
    raw[280:296] = np.asarray(row, "<f4").tobytes()
    pathlib.Path(path).write_bytes(bytes(raw))


def test_singular_affine(work, capsys):
    _with_srow_x("flat_affine.nii", [0, 0, 0, -78])
    _fails(capsys, work, _register("flat_affine.nii"), "flat_affine.nii", "singular")


def test_non_finite_affine(work, capsys):
    _with_srow_x("nan_affine.nii", [np.nan, 0, 0, 0])
    _fails(capsys, work, _register("nan_affine.nii"), "nan_affine.nii", "NaN or Inf")


# --- images that cannot be registered as they are -----------------------------------------


def test_no_overlap(work, capsys):
    data, affine = _head()
    affine[:3, 3] += 1000.0  # a kilometre away in world space
    _save("far.nii.gz", data, affine)
    line = _fails(capsys, work, _register("far.nii.gz"), "far.nii.gz", "do not overlap", "-i")
    assert "0% of the moving" in line


def test_nearly_empty_overlap(work, capsys):
    data, affine = _head()
    affine[0, 3] += 0.85 * 4 * SHAPE[0]  # only the edge of the moving head reaches into the fixed field of view
    _save("edge.nii.gz", data, affine)
    _fails(capsys, work, _register("edge.nii.gz"), "edge.nii.gz", "barely overlap", "-i")


def test_initial_affine_rescues_a_displaced_pair(work, capsys):
    from ilex.image.io import load_image
    from ilex.registration.overlap import check_overlap

    data, affine = _head()
    affine[0, 3] += 0.85 * 4 * SHAPE[0]
    moving = load_image(_save("edge.nii.gz", data, affine))
    fixed = load_image("fixed.nii.gz")
    undo = np.linalg.inv(fixed.affine) @ _head()[1]  # moving voxels to fixed voxels, as an LTA vox2vox would say
    assert min(check_overlap(moving, fixed, undo)) > 0.95


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        (
            "only_fixed.txt",
            "#Insight Transform File V1.0\nTransform: AffineTransform_double_3_3\nFixedParameters: 0 0 0\n",
            "'Parameters:'",
        ),
        ("no_matrix.lta", "type = 1 # LINEAR_RAS_TO_RAS\nnxforms = 1\n", "no '1 4 4' matrix"),
        ("no_geometry.lta", "type = 0\nnxforms = 1\n1 4 4\n1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n", "volume info"),
    ],
)
def test_bad_initial_affine_is_one_line_exit_1(work, capsys, name, text, problem):
    # These ended in 'internal error' (exit 3) with a traceback-worthy exception before.
    pathlib.Path(name).write_text(text)
    _fails(capsys, work, _register() + ["-i", name], name, problem)


# --- options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, expected",
    [
        (["-e", "100"], "-e 100"),
        (["-e", "0"], "-e 0"),
        (["-r", "1.5"], "-r 1.5"),
        (["-r", "-0.1"], "-r -0.1"),
        (["-n", "0"], "-n 0"),
        (["-j", "0"], "-j 0"),
        (["-m", "affine"], "but affine needs the affine one"),
        (["-m", "fancy"], "-m fancy: unknown model"),
        (["-m", "joint"], "-m joint takes 2 weight files"),
        (["-H"], "-H: header-only output is for methods that give a matrix (affine, rigid)"),
        (["-T", "inverse.lta"], "-m deform gives a warp, not a matrix"),
        (["-m", "optimize"], "-m optimize needs no weights"),
        (["-m", "joint", "--refine"], "refining -m joint"),
        (["--similarity", "mi"], "use them with -m optimize or --refine"),
    ],
)
def test_bad_options(work, capsys, option, expected):
    _fails(capsys, work, _register() + option, expected)


# --- weights ------------------------------------------------------------------------------


def test_truncated_weights(work, capsys):
    data = pathlib.Path(E32).read_bytes()
    with open("cut.h5", "wb") as f:
        f.write(data[: len(data) // 3])
    _fails(capsys, work, _register_with_weights("cut.h5"), "cut.h5", "truncated or corrupt")


def test_weights_of_another_architecture(work, capsys):
    with h5py.File("affine.h5", "w") as f:
        f.attrs["layer_names"] = np.array([b"conv"])
        f.create_group("conv").attrs["weight_names"] = np.array([b"conv/kernel:0", b"conv/bias:0"])
        f["conv/conv/kernel:0"] = np.zeros((3, 3, 3, 2, 8), np.float32)
        f["conv/conv/bias:0"] = np.zeros((8,), np.float32)
    _fails(capsys, work, _register_with_weights("affine.h5"), "affine.h5", "not a SynthMorph affine model")


AFFINE = fixture_path("affine_e64.h5")


@pytest.mark.parametrize(
    "model, weights, expected",
    [
        ("affine", [E32], "but affine needs the affine one"),
        ("rigid", [E32], "but rigid needs the affine one"),
        ("deform", [AFFINE], "but deform needs the deformable one"),
        ("joint", [E32, AFFINE], "joint takes the affine weights first"),
        ("joint", [AFFINE], "-m joint takes 2 weight files"),
    ],
)
def test_weights_for_the_wrong_model(work, capsys, model, weights, expected):
    argv = [a for a in _register() if a not in ("-w", E32, "-m", "deform")]
    for w in weights:
        argv += ["-w", w]
    _fails(capsys, work, argv + ["-m", model], expected)


def test_bundle_with_mismatched_shapes(work, capsys):
    ilex.save(ilex.load(E32), "bundle")
    config = json.loads(pathlib.Path("bundle/config.json").read_text())
    config["_ilex"]["constructor_kwargs"]["enc_nf"] = [16, 16, 16, 16]
    pathlib.Path("bundle/config.json").write_text(json.dumps(config))
    _fails(capsys, work, _register_with_weights("bundle"), "bundle", "expected")


def test_bundle_naming_unknown_architecture(work, capsys):
    ilex.save(ilex.load(E32), "bundle")
    config = json.loads(pathlib.Path("bundle/config.json").read_text())
    config["_ilex"]["architecture"] = "subprocess.Popen"
    pathlib.Path("bundle/config.json").write_text(json.dumps(config))
    _fails(capsys, work, _register_with_weights("bundle"), "subprocess.Popen", "refused")


def test_missing_default_weights_say_how_to_get_them(work, capsys, monkeypatch):
    argv = [a for a in _register() if a not in ("-w", E32)]
    line = _fails(capsys, work, argv, "ilex-hub/synthmorph.deform.3", "synthmorph.deform.3.h5", "ilex convert")
    assert "FREESURFER_HOME" in line or "FreeSurfer" in line


# --- outputs ------------------------------------------------------------------------------


def test_output_directory_under_a_file(work, capsys):
    # A missing directory is created (test_first_use); one that cannot be is refused first.
    pathlib.Path("no").write_text("mine")
    _fails(capsys, work, _register() + ["-T", "no/such/dir/inverse.nii.gz"], "no/such/dir", "cannot create it")


def test_output_directory_not_writable(work, capsys, monkeypatch):
    os.mkdir("ro")
    os.chmod("ro", 0o555)
    _deny_as_root(monkeypatch, "ro")
    _fails(capsys, work, _register() + ["-T", "ro/inverse.nii.gz"], "ro", "not writable")


def test_output_equals_input(work, capsys):
    _fails(capsys, work, _register() + ["-O", "moving.nii.gz"], "-O moving.nii.gz", "overwrite the moving image")


def test_two_outputs_same_path(work, capsys):
    _fails(capsys, work, _register() + ["-T", "./warp.nii.gz"], "-T ./warp.nii.gz", "also given to -t")


def test_qc_path_is_a_file(work, capsys):
    pathlib.Path("report").write_text("mine")
    argv = _register()
    argv[argv.index("qc")] = "report"
    _fails(capsys, work, argv, "--qc report", "not a directory")


def test_d_directory_that_cannot_be_created(work, capsys, monkeypatch):
    # A missing -d DIR is created, as mri_synthmorph does (os.makedirs); one that cannot be is refused first.
    os.mkdir("ro")
    os.chmod("ro", 0o555)
    _deny_as_root(monkeypatch, "ro")
    _fails(capsys, work, _register() + ["-d", "ro/inputs"], "-d ro/inputs", "cannot create it")


def test_d_path_is_a_file(work, capsys):
    pathlib.Path("inputs").write_text("mine")
    _fails(capsys, work, _register() + ["-d", "inputs"], "-d inputs", "not a directory")


# --- apply --------------------------------------------------------------------------------


def test_apply_with_an_image_as_warp(work, capsys):
    _fails(
        capsys,
        work,
        ["apply", "fixed.nii.gz", "moving.nii.gz", "out.nii.gz"],
        "fixed.nii.gz",
        "not a displacement field",
    )


def test_apply_missing_warp(work, capsys):
    _fails(capsys, work, ["apply", "warp.nii.gz", "moving.nii.gz", "out.nii.gz"], "warp.nii.gz", "no such")


def test_apply_odd_paths(work, capsys):
    _fails(capsys, work, ["apply", "w.nii.gz", "moving.nii.gz"], "IMAGE OUT pairs")


def test_apply_bad_second_image_writes_nothing(work, capsys):
    disp = np.zeros((*SHAPE, 1, 3), np.float32)
    img = nib.Nifti1Image(disp, _head()[1])
    img.header.set_intent(1006)
    nib.save(img, "w.nii.gz")
    pathlib.Path("junk.nii").write_text("junk")
    _fails(capsys, work, ["apply", "w.nii.gz", "moving.nii.gz", "a.nii.gz", "junk.nii", "b.nii.gz"], "junk.nii")


# --- the real process -------------------------------------------------------------------


def test_process_exit_status_and_debug(work):
    cmd = [sys.executable, "-m", "ilex", "moving.nii.gz", "missing.mgz", "-m", "deform", "-o", "out.nii.gz"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "missing.mgz" in proc.stderr
    debug = subprocess.run([*cmd, "--debug"], capture_output=True, text=True, check=False)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert not os.path.exists("out.nii.gz")


# --- memory -------------------------------------------------------------------------------


def test_not_enough_memory_says_so_before_running(work, capsys, monkeypatch):
    from ilex.registration import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 1e6)
    _fails(capsys, work, _register(), "-e 32", "needs about", "--no-memory-check")


def test_memory_hint_names_an_extent_that_fits():
    import re

    from ilex.errors import OptionError
    from ilex.registration.memory import check_memory, estimate_peak_bytes

    available = (estimate_peak_bytes(192) + estimate_peak_bytes(224)) / 2
    with pytest.raises(OptionError) as info:
        check_memory(256, 256, available=available)
    suggested = int(re.search(r"try -e (\d+)", str(info.value)).group(1))
    assert suggested == 192 and estimate_peak_bytes(suggested) <= available < estimate_peak_bytes(suggested + 32)
    assert check_memory(192, 256, available=available) == estimate_peak_bytes(192)


def test_memory_is_checked_before_the_weights_are_loaded(work, capsys, monkeypatch):
    # The 3.5 GB hypernetwork must not be read for a run that cannot fit: the weights here would
    # fail to load, so only a check made first can answer with the memory message.
    import ilex.bundle
    from ilex.bundle import io as bundle_io
    from ilex.registration import memory

    loaded = []

    def no_loading(*args, **kwargs):
        loaded.append(args)
        raise AssertionError("weights were loaded before the memory check")

    # Both names a caller may reach the loader by (the CLI imports `ilex.bundle.load`).
    monkeypatch.setattr(ilex.bundle, "load", no_loading)
    monkeypatch.setattr(bundle_io, "load", no_loading)
    monkeypatch.setattr(memory, "available_bytes", lambda: 1e6)
    _fails(capsys, work, _register(), "-e 32", "needs about")
    assert loaded == []
    # With memory to spare the same run does reach the loader: the patch is on the CLI's path,
    # so the check above could have failed.
    monkeypatch.setattr(memory, "available_bytes", lambda: 1e12)
    main(_register())
    assert loaded


def test_missing_hub_weights_are_their_own_error_type():
    # The CLI tells "not here" apart from "damaged" by type, not by another module's wording.
    from ilex.errors import WeightsNotFound

    with pytest.raises(WeightsNotFound):
        ilex.load("ilex-hub/not-downloaded-here")


def test_voxel_lta_for_images_of_another_shape(work, capsys):
    # A voxel-to-voxel LTA is only meaningful on the grids it was made for: the CLI passes the shapes too.
    from ilex.image.lta import LinearTransform, VolumeGeometry, format_lta

    moving, fixed = nib.load("moving.nii.gz"), nib.load("fixed.nii.gz")
    wrong = tuple(n + 2 for n in moving.shape)
    lta = LinearTransform(
        0,
        np.eye(4),
        VolumeGeometry.from_affine(moving.affine, wrong),
        VolumeGeometry.from_affine(fixed.affine, fixed.shape),
    )
    pathlib.Path("v.lta").write_text(format_lta(lta))
    _fails(capsys, work, _register() + ["-i", "v.lta"], "v.lta", "shape")
