"""Building a study template: rounds of batch registrations to the current template, each reduced
once into the next template (`ilex template`, `ilex.build_template`).

Round 0 (without an initial template) aligns every image affinely to the first one (one batch);
the template is the average of the aligned images moved by the inverse of the log-Euclidean
mean affine. Round k = 1..K registers every image to template k-1 (one batch: `ilex batch`'s
runner, local or on Dask, with its resume), averages the moved images, and moves the average by
the inverse of the mean transform (`shape.py`). Each round is committed (template_round{k}, a
row of rounds.csv, state.json) before its intermediate files are deleted, so a rerun continues
from the last complete round, and inside a round the batch skips registrations that finished.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .._atomic import atomic_file, output_batch
from ..batch.run import BatchSettings
from ..errors import IlexError, OptionError
from ..registration.methods import OptimizeMethod
from .inputs import TemplateInput, as_inputs, check_inputs
from .shape import (
    MeanTransform,
    ShapeUpdate,
    correlation,
    fit_affine,
    head_mask,
    matrix_power,
    normalised,
    relative_change,
)
from .shape import sharpen as sharpen_image

ROUND_COLUMNS = (
    "round",
    "mean_displacement_mm",
    "max_displacement_mm",
    "mean_similarity",
    "template_change",
    "averaged",
    "failed",
    "seconds",
    "reduce_seconds",
    "peak_memory_gib",
)
STATE_VERSION = 1
# A round's own files (warps, moved images) are read back once by the reduction and deleted when the
# round is committed: uncompressed, since gzip took 2.4 s of a 1 mm registration's ~4 s to write a
# warp and 0.5 s to read it back (measured; 85 MB per warp, 28 MB per moved image at 1 mm on disk).
INTERMEDIATE = ".nii"


@dataclass(frozen=True)
class TemplateSettings(BatchSettings):
    """What every round shares: `ilex batch`'s settings (`weights`: () for no weights,
    `-m optimize`; a pair (affine, deform) gives methods that need an affine stage their
    detector; `method` a name, joint by default), and the loop's own. `step` is the shape
    update's step (1: the whole inverse of the mean transform); `sharpen` applies Laplacian
    sharpening to each new template; `warp_format` is that of the final per-image warps."""

    method: str = "joint"
    step: float = 1.0
    sharpen: bool = False

    def check(self) -> None:
        if not 0.0 < self.step <= 1.0:
            raise OptionError("the shape update's step must lie in (0, 1]", argument="step", value=self.step)
        if self.warp_format not in ("freesurfer", "itk"):
            raise OptionError("choose freesurfer or itk", argument="warp_format", value=self.warp_format)
        from ..registration.methods import needs_prior_affine

        if needs_prior_affine(self.method) and not (isinstance(self.weights, tuple) and len(self.weights) == 2):
            raise OptionError(
                f"-m {self.method}: each round starts with an affine stage, which needs SynthMorph's affine "
                "weights too: give -w AFFINE -w DEFORM (as for joint)"
            )

    def batch(self, method=None) -> BatchSettings:
        """The `BatchSettings` of a round's registrations (intermediate warps in FreeSurfer's format)."""
        shared = {f.name: getattr(self, f.name) for f in fields(BatchSettings)}
        return BatchSettings(
            **{**shared, "method": self.method if method is None else method, "warp_format": "freesurfer"}
        )

    def affine_method(self):
        """The method of the affine stage: the weights' affine detector when they have one, else the
        optimiser's affine stage alone (no deformable iterations); None when neither is available."""
        if self.weights == ():
            return _optimiser_affine_stage(self.effective_hyper)
        if isinstance(self.weights, tuple) and len(self.weights) == 2:
            return "affine"
        return None


class _AffineStage(OptimizeMethod):
    """`-m optimize` with no deformable iterations: its affine stage alone (a zero velocity)."""

    # The batch keys its prepared methods by (method, λ): a configured method must hash.
    def __hash__(self):
        return hash((self.name, self.hyper, self.levels, self.iterations))


def _optimiser_affine_stage(hyper: float) -> _AffineStage:
    return _AffineStage(hyper=hyper, iterations=(0, 0))


@dataclass
class TemplateImage:
    """One image's result: its final transforms to the template (paths), or why it failed.

    `forward`: warp on the template grid (template voxel -> world in the image, as `register -t`
    with the template fixed); `inverse`: on the image grid; `moved`: the image on the template
    grid; `affine`: the affine part, image RAS -> template RAS (LTA, or ITK text with
    warp_format "itk"), also as `matrix`; `folding_percent`: voxels where `forward` folds."""

    id: str
    image: str
    status: str
    forward: str | None = None
    inverse: str | None = None
    moved: str | None = None
    affine: str | None = None
    matrix: list | None = None
    folding_percent: float | None = None
    error: str = ""


@dataclass
class TemplateResult:
    """`template` (nibabel image) at `path`; `images` per input; `rounds` the rows of rounds.csv."""

    path: str
    outdir: str
    images: list[TemplateImage]
    rounds: list[dict]
    _tmp: object = field(default=None, repr=False)

    @property
    def template(self):
        import nibabel as nib

        return nib.load(self.path)


def _fingerprint(inputs: list[TemplateInput], settings: TemplateSettings, initial: str | None) -> str:
    def stamp(path):
        st = os.stat(path)
        return [os.path.abspath(path), st.st_size, st.st_mtime_ns]

    what = {
        "inputs": [[i.id, *stamp(i.path), i.init and stamp(i.init)] for i in inputs],
        "initial": initial and stamp(initial),
        "settings": asdict(settings),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _write_json(path: str, document: dict) -> None:
    with atomic_file(path, suffix=".json") as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2)
        f.write("\n")


def _write_rounds_csv(path: str, rows: list[dict]) -> None:
    with atomic_file(path, suffix=".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ROUND_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: ("" if row.get(k) is None else round(row[k], 6) if isinstance(row[k], float) else row[k])
                    for k in ROUND_COLUMNS
                }
            )


class _Builder:
    def __init__(
        self, inputs, outdir, settings: TemplateSettings, initial, keep_rounds, client, log, progress, on_round
    ):
        self.inputs = inputs
        self.outdir = outdir
        self.settings = settings
        self.initial = initial
        self.keep_rounds = keep_rounds
        self.client = client
        self.log = log or (lambda text: None)
        self.progress = progress
        self.on_round = on_round
        self.state_path = os.path.join(outdir, "state.json")
        self._registrars: dict[str, object] = {}

    # -- files ---------------------------------------------------------------------------------------
    def path(self, *parts) -> str:
        return os.path.join(self.outdir, *parts)

    def template_path(self, k: int) -> str:
        return self.path(f"template_round{k}.nii.gz")

    def round_dir(self, k: int) -> str:
        return self.path(f"round{k}")

    def load_state(self, fingerprint: str) -> dict:
        if not os.path.isfile(self.state_path):
            return {"version": STATE_VERSION, "fingerprint": fingerprint, "completed": -1, "rounds": [], "images": {}}
        with open(self.state_path, encoding="utf-8") as f:
            state = json.load(f)
        if state.get("fingerprint") != fingerprint:
            raise OptionError(
                f"{self.outdir}: holds a template built from other images or settings (state.json); "
                "choose another output directory, or remove it to start again"
            )
        return state

    def commit(self, state: dict, k: int, row: dict | None) -> None:
        state["completed"] = k
        if row is not None:
            state["rounds"] = [r for r in state["rounds"] if r["round"] != k] + [row]
        _write_rounds_csv(self.path("rounds.csv"), state["rounds"])
        _write_json(self.state_path, state)
        if not self.keep_rounds:
            shutil.rmtree(self.round_dir(k), ignore_errors=True)

    # -- batches ---------------------------------------------------------------------------------------
    def run(self, pairs, method, name: str):
        """One batch of registrations (local, or on the Dask client); returns its records."""
        from ..batch import run_batch
        from ..registration.memory import estimate_peak_bytes

        settings = self.settings.batch(method)
        memory = None
        if not isinstance(settings.method, str):  # the optimiser's affine stage: the batch's estimate takes names
            memory = estimate_peak_bytes(settings.extent)
        from ..registration.outputs import outputs_complete

        registrar = None
        # A resumed round whose registrations all finished needs no model (joint's weights take seconds to load).
        if self.client is None and any(p.problem is None and not outputs_complete(p.outputs) for p in pairs):
            registrar = self._registrars.get(name)
            if registrar is None:
                registrar = self._registrars[name] = settings.registrar(pairs)
        return run_batch(
            pairs, settings, client=self.client, progress=self.progress, registrar=registrar, memory_bytes=memory
        )

    def report_failures(self, k: int, records) -> list[str]:
        failed = []
        for r in records:
            if r.status == "failed":
                failed.append(r.pair)
                self.log(
                    f"ilex template: round {k}: {r.pair} ({r.moving}) failed and is left out of the average: {r.error}"
                )
        return failed

    # -- round 0: the affine average -----------------------------------------------------------------
    def round0(self, state: dict) -> None:
        from ..batch.pairs import Pair
        from ..image.io import load_image, save_image
        from ..image.warp_io import load_warp

        start = time.perf_counter()
        if self.initial is not None:
            image = load_image(self.initial, what="initial template")
            save_image(self.template_path(0), normalised(image.data), image.affine)
            self.commit(state, 0, None)
            self.log(f"ilex template: round 0: the initial template is {self.initial}")
            return
        reference = load_image(self.inputs[0].path, what="image")
        method = self.settings.affine_method()
        directory = self.round_dir(0)
        os.makedirs(os.path.join(directory, "warps"), exist_ok=True)
        pairs = [
            Pair(
                k,
                item.path,
                reference.path,
                {"trans": os.path.join(directory, "warps", f"{item.id}{INTERMEDIATE}")},
                init=item.init,
                id=item.id,
            )
            for k, item in enumerate(self.inputs)
            if k > 0
        ]
        records = self.run(pairs, method, "affine") if method is not None else []
        failed = self.report_failures(0, records)
        mask = head_mask(reference.data)
        mean = MeanTransform(reference.affine, mask)
        matrices = {self.inputs[0].id: np.eye(4)}
        mean.add_matrix(np.eye(4))
        by_id = {r.pair: r for r in records}
        for item, pair in zip(self.inputs[1:], pairs, strict=True):
            record = by_id.get(item.id)
            if record is not None and record.status == "failed":
                continue
            if record is None:
                matrix = np.eye(4)  # no affine stage available: the plain average on the first image's grid
            else:
                matrix = fit_affine(
                    load_warp(pair.outputs["trans"]).displacement, reference.affine, np.ones(reference.shape, bool)
                )
            matrices[item.id] = matrix
            mean.add_matrix(matrix)
        if len(matrices) < 2:
            raise IlexError("round 0: fewer than 2 images could be aligned; see the errors above")
        back = matrix_power(mean.mean_log, -1.0)
        total = np.zeros(reference.shape, np.float32)
        aligned = []
        for item in self.inputs:
            if item.id not in matrices:
                continue
            image = reference if item is self.inputs[0] else load_image(item.path, what="image")
            moved = normalised(_resample_world(image, matrices[item.id] @ back, reference.affine, reference.shape))
            total += moved
            aligned.append(normalised(_resample_world(image, matrices[item.id], reference.affine, reference.shape)))
        template = total / len(aligned)
        if self.settings.sharpen:
            template = sharpen_image(template)
        ref = normalised(reference.data)
        similarity = float(np.mean([correlation(a, ref, mask) for a in aligned[1:]])) if len(aligned) > 1 else None
        size = np.linalg.norm(
            _world_displacement(matrix_power(mean.mean_log, 1.0), reference.affine, reference.shape)[mask], axis=-1
        )
        save_image(self.template_path(0), template, reference.affine)
        state["affines_round0"] = {key: m.tolist() for key, m in matrices.items()}
        row = {
            "round": 0,
            "mean_displacement_mm": float(size.mean()),
            "max_displacement_mm": float(size.max()),
            "mean_similarity": similarity,
            "template_change": None,
            "averaged": len(matrices),
            "failed": " ".join(failed),
            "seconds": time.perf_counter() - start,
            "peak_memory_gib": max((r.peak_memory_gib or 0.0 for r in records), default=None),
        }
        self.commit(state, 0, row)
        self.announce(row, 0)

    def announce(self, row: dict, rounds: int) -> None:
        similarity = "n/a" if row["mean_similarity"] is None else f"{row['mean_similarity']:.4f}"
        change = "" if row["template_change"] is None else f", template change {100 * row['template_change']:.2f} %"
        total = f"/{rounds}" if rounds else " (affine average)"
        self.log(
            f"ilex template: round {row['round']}{total}: {row['averaged']} averaged, "
            f"{len(row['failed'].split()) if row['failed'] else 0} failed; "
            f"mean transform {row['mean_displacement_mm']:.3f} mm "
            f"(max {row['max_displacement_mm']:.3f} mm); similarity {similarity}{change}; {row['seconds']:.1f} s"
        )
        if self.on_round is not None:
            self.on_round(row)

    # -- rounds 1..K --------------------------------------------------------------------------------------
    def round(self, state: dict, k: int, rounds: int) -> None:
        from ..batch.pairs import Pair
        from ..image.io import load_image, save_image
        from ..image.warp_io import load_warp

        start = time.perf_counter()
        final = k == rounds
        previous = load_image(self.template_path(k - 1), what="template")
        directory = self.round_dir(k)
        kinds = ["moved", "warps"] + (["inverse"] if final else [])
        for kind in kinds:
            os.makedirs(os.path.join(directory, kind), exist_ok=True)
        inits = {item.id: item.init for item in self.inputs}
        records_before = []
        if self._needs_affine_stage():
            os.makedirs(os.path.join(directory, "affine"), exist_ok=True)
            stage = [
                Pair(
                    j,
                    item.path,
                    previous.path,
                    {"trans": os.path.join(directory, "affine", f"{item.id}.lta")},
                    init=item.init,
                    id=item.id,
                )
                for j, item in enumerate(self.inputs)
            ]
            records_before = self.run(stage, "affine", "affine")
            inits = {r.pair: (r.outputs["trans"] if r.status != "failed" else None) for r in records_before}
        pairs = []
        for j, item in enumerate(self.inputs):
            outputs = {
                "out_moving": os.path.join(directory, "moved", f"{item.id}{INTERMEDIATE}"),
                "trans": os.path.join(directory, "warps", f"{item.id}{INTERMEDIATE}"),
            }
            if final:
                outputs["inverse"] = os.path.join(directory, "inverse", f"{item.id}{INTERMEDIATE}")
                outputs["qc"] = self.path("qc", item.id)
            problem = None if not records_before or inits[item.id] else "its affine stage failed"
            pairs.append(Pair(j, item.path, previous.path, outputs, init=inits[item.id], id=item.id, problem=problem))
        records = self.run(pairs, None, "main")
        failed = self.report_failures(k, records)
        if final:
            from ..batch import write_summary

            os.makedirs(self.path("qc"), exist_ok=True)
            write_summary(records, self.path("qc", "summary"), self.settings.batch())
        reducing = time.perf_counter()
        done = [(item, pair) for item, pair, r in zip(self.inputs, pairs, records, strict=True) if r.status != "failed"]
        if len(done) < 2:
            raise IlexError(
                f"round {k}: fewer than 2 images registered; see the errors above (a rerun resumes this round)"
            )
        mask = head_mask(previous.data)
        mean = MeanTransform(previous.affine, mask)
        total = np.zeros(previous.shape, np.float32)
        similarities = []
        for _item, pair in done:
            mean.add(load_warp(pair.outputs["trans"]).displacement)
            moved = normalised(load_image(pair.outputs["out_moving"], what="moved image", check_values=False).data)
            similarities.append(correlation(moved, previous.data, mask))
            total += moved
        update = ShapeUpdate(mean, previous.shape, self.settings.step)
        template = update.image(total / len(done))
        if self.settings.sharpen:
            template = sharpen_image(template)
        mean_mm, max_mm = update.mean_displacement(mask)
        row = {
            "round": k,
            "mean_displacement_mm": mean_mm,
            "max_displacement_mm": max_mm,
            "mean_similarity": float(np.mean(similarities)),
            "template_change": relative_change(template, previous.data, mask),
            "averaged": len(done),
            "failed": " ".join(failed),
            "seconds": 0.0,
            "peak_memory_gib": max((r.peak_memory_gib or 0.0 for r in records + records_before), default=None),
        }
        with output_batch():
            save_image(self.template_path(k), template, previous.affine)
            if final:
                state["images"] = self.final_outputs(done, failed, records, update, previous, template)
                save_image(self.path("template.nii.gz"), template, previous.affine)
        row["seconds"] = time.perf_counter() - start
        row["reduce_seconds"] = time.perf_counter() - reducing  # the serial part: averaging, update, final outputs
        self.commit(state, k, row)
        self.announce(row, rounds)

    def _needs_affine_stage(self) -> bool:
        from ..registration.methods import needs_prior_affine

        return needs_prior_affine(self.settings.method)

    def final_outputs(self, done, failed, records, update: ShapeUpdate, previous, template) -> dict:
        """Each image's warps, moved image and affine, made to point at the final template (the last
        round's registrations composed with its shape update); written with the template."""
        from ..image.io import Image, load_image, save_image
        from ..image.matrix_io import save_matrix
        from ..image.warp_io import Warp, load_warp, save_warp
        from ..transforms.jacobian import folding_fraction, jacobian_determinant

        itk = self.settings.warp_format == "itk"
        mask = head_mask(template)
        template_image = Image(template, previous.affine, self.path("template.nii.gz"))
        out = {}
        for item, pair in done:
            folder = self.path("images", item.id)
            os.makedirs(folder, exist_ok=True)
            image = load_image(item.path, what="image")
            forward = update.forward(load_warp(pair.outputs["trans"]).displacement)
            inverse = update.inverse(load_warp(pair.outputs["inverse"]).displacement, image.affine)
            moved = update.image(load_image(pair.outputs["out_moving"], what="moved image", check_values=False).data)
            matrix = np.linalg.inv(fit_affine(forward, previous.affine, mask))  # image RAS -> template RAS
            paths = {
                "forward": os.path.join(folder, "warp.nii.gz"),
                "inverse": os.path.join(folder, "inverse.nii.gz"),
                "moved": os.path.join(folder, "moved.nii.gz"),
                "affine": os.path.join(folder, "affine.txt" if itk else "affine.lta"),
            }
            save_warp(
                paths["forward"], Warp(forward, previous.affine, image.affine, image.shape), self.settings.warp_format
            )
            save_warp(
                paths["inverse"],
                Warp(inverse, image.affine, previous.affine, previous.shape),
                self.settings.warp_format,
            )
            save_image(paths["moved"], moved, previous.affine)
            save_matrix(paths["affine"], matrix, image, template_image, "itk" if itk else "lta")
            folding = 100.0 * float(folding_fraction(jacobian_determinant(forward, previous.affine)))
            out[item.id] = {**paths, "matrix": matrix.tolist(), "folding_percent": folding}
        errors = {r.pair: r.error for r in records if r.status == "failed"}
        for item in self.inputs:
            if item.id in errors:
                out[item.id] = {"error": errors[item.id]}
        return out

    # -- the whole build ---------------------------------------------------------------------------------
    def build(self, rounds: int) -> TemplateResult:
        fingerprint = _fingerprint(self.inputs, self.settings, self.initial)
        state = self.load_state(fingerprint)
        if state["completed"] > rounds:
            raise OptionError(
                f"--rounds {rounds}: {self.outdir} already holds {state['completed']} rounds; "
                "ask for at least as many, or use another output directory"
            )
        if state["completed"] >= 0:
            self.log(f"ilex template: resuming in {self.outdir} after round {state['completed']}")
        if state["completed"] < 0:
            self.round0(state)
        for k in range(state["completed"] + 1, rounds + 1):
            self.round(state, k, rounds)
        if state["completed"] == rounds and not os.path.isfile(self.path("template.nii.gz")):
            raise IlexError(
                f"{self.outdir}: round {rounds} is complete but template.nii.gz is missing; remove state.json "
                "to start again"
            )
        return self.result(state)

    def result(self, state: dict) -> TemplateResult:
        images = []
        for item in self.inputs:
            info = state["images"].get(item.id, {"error": "not in the last round"})
            if "error" in info:
                images.append(TemplateImage(item.id, item.path, "failed", error=info["error"]))
            else:
                images.append(
                    TemplateImage(
                        item.id,
                        item.path,
                        "done",
                        info["forward"],
                        info["inverse"],
                        info["moved"],
                        info["affine"],
                        info["matrix"],
                        info["folding_percent"],
                    )
                )
        return TemplateResult(self.path("template.nii.gz"), self.outdir, images, list(state["rounds"]))


def _resample_world(image, world_matrix: np.ndarray, target_affine: np.ndarray, target_shape) -> np.ndarray:
    """`image` on a target grid through a world map: target voxel p takes the value at `M A_t p`."""
    import jax.numpy as jnp

    from ..registration.pipeline import _matrix_field, _resample

    vox = np.linalg.inv(image.affine) @ world_matrix @ target_affine
    disp = _matrix_field(np.asarray(vox, np.float32), tuple(int(n) for n in target_shape))
    return np.asarray(_resample(jnp.asarray(image.data, jnp.float32), disp, "linear", jnp.float32(0.0)))


def _world_displacement(matrix: np.ndarray, affine: np.ndarray, shape) -> np.ndarray:
    from .shape import world_points

    world = world_points(affine, shape).astype(np.float64)
    return world @ matrix[:3, :3].T + matrix[:3, 3] - world


def build_template(
    images,
    outdir: str | os.PathLike | None = None,
    *,
    method: str = "joint",
    weights=None,
    hyper: float = 0.5,
    steps: int = 7,
    extent: int = 256,
    rounds: int = 4,
    initial=None,
    step: float = 1.0,
    sharpen: bool = False,
    keep_rounds: bool = False,
    warp_format: str = "freesurfer",
    client=None,
    algorithm: str | None = None,
    clip_percentile: float | None = None,
    compilation_cache: bool = True,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    on_round: Callable[[dict], None] | None = None,
) -> TemplateResult:
    """Build an unbiased template of `images` (paths, (id, path[, init]) tuples, or a CSV file).

    Each of `rounds` rounds registers every image to the current template with `method` ("joint",
    "deform" with an affine stage, "optimize" without weights; `weights` as `ilex batch`'s, default
    the method's), as one batch on this machine or on the Dask `client`, then averages the moved
    images and moves the average by the inverse of the mean transform (step `step`). `initial` is
    a starting template; without one, round 0 is the affine average of the images on the first
    image's grid. Files go to `outdir` (a temporary directory, kept as long as the result, when
    None): template.nii.gz, template_round{k}.nii.gz, rounds.csv, images/ID/{warp, inverse, moved,
    affine}, qc/. A rerun with the same `outdir` continues from the last complete round.

    Returns a `TemplateResult`. Raises `OptionError`/`ImageFileError` for bad input before any
    work (fewer than 2 images; a missing, 4-D, 2-D, NaN or constant image), and `IlexError` when a
    round has fewer than 2 images registered.
    """
    from ..bundle.weights import weights_for
    from ..registration.methods import method_info, needs_prior_affine, resolve_method_name

    try:
        method = resolve_method_name(method)
    except ValueError as e:
        raise OptionError(str(e), argument="method", value=method) from None
    if method_info(method).yields_matrix:
        raise OptionError(
            "a template needs a method that gives a warp: joint, deform or optimize", argument="method", value=method
        )
    if weights is None:
        # a method that needs prior alignment runs the affine detector first: it takes joint's two files
        weights = weights_for("joint" if needs_prior_affine(method) else method, None)
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
    result = _Builder(inputs, outdir, settings, initial, keep_rounds, client, log, progress, on_round).build(rounds)
    result._tmp = tmp
    return result
