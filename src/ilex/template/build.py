"""Building a study template: rounds of batch registrations to the current template, each reduced
once into the next template (`ilex template`, `ilex.build_template`).

Round 0 (without an initial template) aligns every image affinely to the first one (one batch);
the template is the average of the aligned images moved by the inverse of the log-Euclidean
mean affine. Round k = 1..K registers every image to template k-1 (one batch: `ilex batch`'s
runner, local or on Dask, with its resume), averages the moved images, and moves the average by
the inverse of the mean transform (`shape.py`). Each round is committed (template_round{k}, a
row of rounds.csv, state.json) before its intermediate files are deleted, so a rerun continues
from the last complete round, and inside a round the batch skips registrations that finished.

Here: the arguments checked and the build resumed; `rounds.py` runs the rounds, `final.py` writes
each image's outputs, `state.py` keeps the directory and what a rerun resumes from.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from collections.abc import Callable

from ..errors import IlexError, IlexWarning, OptionError
from ..registration.methods import DEFAULT_METHOD
from .inputs import as_inputs, check_inputs
from .result import TemplateResult, template_result
from .rounds import Rounds
from .settings import TemplateSettings
from .state import TemplateFolder, fingerprint


def _build(run: Rounds, rounds: int) -> TemplateResult:
    """Rounds 0..`rounds`, from wherever the folder's state says the last build stopped."""
    folder = run.folder
    state = folder.load_state(fingerprint(run.inputs, run.settings, run.initial))
    if state["completed"] > rounds:
        raise OptionError(
            f"--rounds {rounds}: {folder.outdir} already holds {state['completed']} rounds; "
            "ask for at least as many, or use another output directory"
        )
    if state["completed"] >= 0:
        run.log(f"ilex template: resuming in {folder.outdir} after round {state['completed']}")
    if state["completed"] < 0:
        run.round0(state)
    for k in range(state["completed"] + 1, rounds + 1):
        run.round(state, k, rounds)
    if state["completed"] == rounds and not os.path.isfile(folder.template):
        raise IlexError(
            f"{folder.outdir}: round {rounds} is complete but template.nii.gz is missing; remove state.json "
            "to start again"
        )
    return template_result(folder, run.inputs, state)


@contextlib.contextmanager
def _nan_warned_once(inputs, initial: str | None):
    """Inside: no NaN warning for the images (and `initial`) that `check_inputs` has read. Their
    NaN voxels become background at every load, once per round; the warning that says so was given
    once, when the inputs were checked (in this process, once per file)."""
    given = [item.path for item in inputs] + ([initial] if initial else [])
    paths = {form for path in given for form in (os.fspath(path), os.path.abspath(path))}
    with warnings.catch_warnings():
        for path in paths:
            warnings.filterwarnings(
                "ignore",
                message=re.escape(os.fspath(path)) + r": \d+ NaN voxels? taken as background",
                category=IlexWarning,
            )
        yield


def build_template(
    images,
    outdir: str | os.PathLike | None = None,
    *,
    method: str = DEFAULT_METHOD,
    weights=None,
    hyper: float = 0.5,
    steps: int = 7,
    extent: int = 256,
    rounds: int = 4,
    initial=None,
    step: float = 1.0,
    sharpen: bool = False,
    keep_rounds: bool = False,
    exclude_flagged: bool = False,
    qc_every_round: bool = False,
    fine_every_round: bool = False,
    warp_format: str = "freesurfer",
    client=None,
    algorithm: str | None = None,
    clip_percentile: float | None = None,
    compilation_cache: bool = True,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    on_round: Callable[[dict], None] | None = None,
    memory_resource: str = "MEMORY",
    memory_check: bool = True,
    average: str | None = None,
) -> TemplateResult:
    """Build an unbiased template of `images` (paths, (id, path[, init]) tuples, or a CSV file).

    A method that answers with a matrix ("rigid", "affine": `Method.yields_matrix`) builds a
    linear template, as FreeSurfer's `mri_robust_template` does for one subject's sessions
    (`linear.py`): every round registers each image to the current template by a matrix, the
    template lies in the sessions' halfway space (the log-Euclidean mean of their maps is the
    identity), on the first image's grid, and is the `average` of the moved images ("median", the
    default for a linear template, or "mean"; a deformable template's is the mean). Its `weights`
    are SynthMorph's detector's when given; None or () runs the optimiser's affine stage instead
    (rigid: kept rigid). Each image gets images/ID/{moved.nii.gz, affine.lta, affine.txt,
    affine.h5}: the matrix image RAS -> template RAS as LTA, ITK text and ITK HDF5.

    Each of `rounds` rounds registers every image to the current template with `method` ("joint",
    "deform" with an affine stage, "optimize" without weights; `weights` as `ilex batch`'s, default
    the method's), as one batch on this machine or on the Dask `client`, then averages the moved
    images and moves the average by the inverse of the mean transform (step `step`). `initial` is
    a starting template; without one, round 0 is the affine average of the images on the first
    image's grid. Files go to `outdir` (a temporary directory, kept as long as the result, when
    None): template.nii.gz, template_round{k}.nii.gz, rounds.csv, images/ID/{warp, inverse, moved,
    affine}, qc/. A rerun with the same `outdir` continues from the last complete round.

    After each round, the images whose registration fails a rule of the QC verdict
    (`ilex.qc.verdict`) are named on `log` and in rounds.csv's `flagged` column; `exclude_flagged`
    leaves them out of that round's average (off by default: on a small cohort a flag may be a
    false alarm, and leaving images out changes the template). The rules read each pair's qc.json;
    only the last round draws the QC pages (qc/ID/report.html and its pictures) unless
    `qc_every_round` (then qc/round-K/ID/ too; the template is the same either way).

    The rounds before the last register with the method's `intermediate_round_options` (the
    optimiser leaves out its finest level: registering to a template that will still change at
    its finest detail costs time and changes the result little); the last round registers as the
    method does alone, and its warps are the ones written. `fine_every_round` registers every round so.

    Each image's share of a round's sums is computed where it was registered (on the `client`'s
    workers: Dask tasks, summed by a tree of tasks) in exact fixed point, so the template is the
    same bits whatever the workers and the order pairs finish in. Before each round its memory and
    disk are stated on `log` and checked (`OptionError` when they do not fit; `memory_check` False
    skips the check of this machine's memory); on Dask every task declares its memory as the
    worker resource `memory_resource`.

    Returns a `TemplateResult`. Raises `OptionError`/`ImageFileError` for bad input before any
    work (fewer than 2 images; a missing, 4-D, 2-D, Inf, all-NaN or constant image), and `IlexError`
    when a round has fewer than 2 images registered. An image with NaN voxels (SPM's background)
    is not refused: they become its lowest finite value, with one `IlexWarning` per image for the
    whole build (when the inputs are checked), not one per round.
    """
    from ..bundle.weights import weight_paths
    from ..registration.methods import method_class, resolve_method_name, unaligned_weight_files

    try:
        method = resolve_method_name(method)
    except ValueError as e:
        raise OptionError(str(e), argument="method", value=method) from None
    linear = method_class(method).yields_matrix
    if average is None:
        average = "median" if linear else "mean"
    if linear and weights is None:
        weights = ()  # no weights: the optimiser's affine stage stands in (`TemplateSettings.linear_method`)
    if weights is None:
        # A method that assumes prior alignment runs its prior affine method first: its files too.
        weights = weight_paths(method, unaligned_weight_files(method), None)
    weights = tuple(weights) if isinstance(weights, (list, tuple)) else weights
    if isinstance(weights, tuple) and len(weights) == 1:
        weights = weights[0]
    if rounds < 1:
        raise OptionError("at least 1 round", argument="rounds", value=rounds)
    settings = TemplateSettings(
        method=method,
        weights=weights,
        hyper=hyper,
        steps=steps,
        extent=extent,
        step=step,
        sharpen=sharpen,
        exclude_flagged=exclude_flagged,
        average=average,
        fine_every_round=fine_every_round,
        warp_format=warp_format,
        algorithm=algorithm,
        clip_percentile=clip_percentile,
        gpu=False,
        compilation_cache=compilation_cache,
    )
    settings.check()
    inputs = as_inputs(images)
    initial = None if initial is None else os.path.abspath(os.fspath(initial))
    check_inputs(inputs, initial)
    tmp = None
    if outdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ilex-template-")
        outdir = tmp.name
    outdir = os.path.abspath(os.fspath(outdir))
    from ..registration.outputs import check_creatable

    check_creatable("-o", outdir)
    os.makedirs(outdir, exist_ok=True)
    folder = TemplateFolder(outdir, keep_rounds)
    with _nan_warned_once(inputs, initial):
        run = Rounds(
            inputs,
            folder,
            settings,
            initial,
            client,
            log,
            progress,
            on_round,
            memory_resource,
            memory_check,
            qc_every_round=qc_every_round,
        )
        result = _build(run, rounds)
    result._tmp = tmp
    return result
