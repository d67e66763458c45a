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

import contextvars
import csv
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .._atomic import atomic_file, output_batch
from ..batch.run import BatchSettings
from ..errors import IlexError, OptionError
from ..registration.methods import OptimizeAffineMethod
from .inputs import TemplateInput, as_inputs, check_inputs
from .shape import (
    AffineFit,
    MeanTransform,
    ShapeUpdate,
    correlation,
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
        optimiser's affine stage alone; None when neither is available. Both answer with a matrix."""
        if self.weights == ():
            return OptimizeAffineMethod(hyper=self.effective_hyper)
        if isinstance(self.weights, tuple) and len(self.weights) == 2:
            return "affine"
        return None


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


class _RoundSum:
    """A round's sums (the mean transform, the sum of the moved images, their similarities to the
    template), added on one thread beside the registrations: each pair as soon as its files have
    landed and every pair before it is in, so that the sums are added in the pairs' order whatever
    order the pairs finish in (a resumed or distributed round gives the same bits as a local one).
    `offer` takes records as the batch reports them; `result` takes the rest (skipped pairs) and
    waits. Failed pairs are left out."""

    def __init__(self, previous, mask: np.ndarray, pairs):
        self.previous = previous.data
        self.mask = mask
        self.mean = MeanTransform(previous.affine, mask)
        self.total = np.zeros(previous.shape, np.float32)
        self.similarities: list[float] = []
        self._pairs = list(pairs)
        self._status: dict[int, str] = {}
        self._next = 0
        self._added = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ilex-template-sum")

    def __enter__(self) -> _RoundSum:  # noqa: PYI034  final class in practice
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def offer(self, record) -> None:
        self._status.setdefault(record.index, record.status)
        while self._next < len(self._pairs) and self._pairs[self._next].index in self._status:
            pair = self._pairs[self._next]
            self._next += 1
            if self._status[pair.index] != "failed":
                self._added.append(self._pool.submit(self._add, pair))

    def _add(self, pair) -> None:
        from ..image.io import load_image
        from ..image.warp_io import load_warp

        self.mean.add(load_warp(pair.outputs["trans"]).displacement)
        moved = normalised(load_image(pair.outputs["out_moving"], what="moved image", check_values=False).data)
        self.similarities.append(correlation(moved, self.previous, self.mask))
        self.total += moved

    def result(self, records) -> tuple[MeanTransform, np.ndarray, list[float]]:
        for record in records:
            self.offer(record)
        for added in self._added:
            added.result()
        return self.mean, self.total, self.similarities


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
    def run(self, pairs, method, name: str, on_record=None):
        """One batch of registrations (local, or on the Dask client); returns its records.
        `on_record` is called with each record as its pair finishes (skipped pairs: not)."""
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
            pairs,
            settings,
            client=self.client,
            progress=self.progress,
            registrar=registrar,
            memory_bytes=memory,
            on_record=on_record,
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
        os.makedirs(os.path.join(directory, "affine"), exist_ok=True)
        # The affine stage answers with a matrix (an LTA), never a warp to fit one to.
        pairs = [
            Pair(
                k,
                item.path,
                reference.path,
                {"trans": os.path.join(directory, "affine", f"{item.id}.lta")},
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
            # template (reference) world -> the image's world; no affine stage: the plain average
            matrix = np.eye(4) if record is None else _lta_world(pair.outputs["trans"], item.path, reference)
            matrices[item.id] = matrix
            mean.add_matrix(matrix)
        if len(matrices) < 2:
            raise IlexError("round 0: fewer than 2 images could be aligned; see the errors above")
        back = matrix_power(mean.mean_log, -1.0)
        ref = normalised(reference.data)

        def aligned(item):
            # The image moved to the unbiased mid-space, and its similarity to the first image once aligned.
            image = reference if item is self.inputs[0] else load_image(item.path, what="image")
            moved = normalised(_resample_world(image, matrices[item.id] @ back, reference.affine, reference.shape))
            if item is self.inputs[0]:
                return moved, None
            on_first = normalised(_resample_world(image, matrices[item.id], reference.affine, reference.shape))
            return moved, correlation(on_first, ref, mask)

        total = np.zeros(reference.shape, np.float32)
        similarities = []
        kept = [item for item in self.inputs if item.id in matrices]
        # Two images at once (the work leaves the GIL); summed in the images' order.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="ilex-template-round0") as pool:
            for moved, similarity in pool.map(aligned, kept):
                total += moved
                if similarity is not None:
                    similarities.append(similarity)
        template = total / len(kept)
        if self.settings.sharpen:
            template = sharpen_image(template)
        size = _displacement_size(matrix_power(mean.mean_log, 1.0), reference.affine, reference.shape)[mask]
        save_image(self.template_path(0), template, reference.affine)
        state["affines_round0"] = {key: m.tolist() for key, m in matrices.items()}
        row = {
            "round": 0,
            "mean_displacement_mm": float(size.mean()),
            "max_displacement_mm": float(size.max()),
            "mean_similarity": float(np.mean(similarities)) if similarities else None,
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
        mask = head_mask(previous.data)
        with _RoundSum(previous, mask, pairs) as summed:
            records = self.run(pairs, None, "main", on_record=summed.offer)
            failed = self.report_failures(k, records)
            if final:
                from ..batch import write_summary

                os.makedirs(self.path("qc"), exist_ok=True)
                write_summary(records, self.path("qc", "summary"), self.settings.batch())
            reducing = time.perf_counter()
            done = [
                (item, pair) for item, pair, r in zip(self.inputs, pairs, records, strict=True) if r.status != "failed"
            ]
            if len(done) < 2:
                raise IlexError(
                    f"round {k}: fewer than 2 images registered; see the errors above (a rerun resumes this round)"
                )
            mean, total, similarities = summed.result(records)
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
        # The serial part after the registrations: what is left of the sums, the update, the final outputs.
        row["reduce_seconds"] = time.perf_counter() - reducing
        self.commit(state, k, row)
        self.announce(row, rounds)

    def _needs_affine_stage(self) -> bool:
        from ..registration.methods import needs_prior_affine

        return needs_prior_affine(self.settings.method)

    def final_outputs(self, done, failed, records, update: ShapeUpdate, previous, template) -> dict:
        """Each image's warps, moved image and affine, made to point at the final template (the last
        round's registrations composed with its shape update); written with the template. An image's
        files are written on other threads, one file each, while the next image's transforms are made
        (one image after another took 2.0 s each at 1 mm, half of it gzip); memory stays that of
        about two images."""
        from ..image.io import Image

        mask = head_mask(template)
        template_image = Image(template, previous.affine, self.path("template.nii.gz"))
        fit = AffineFit(previous.affine, mask)
        out, writing = {}, []
        with ThreadPoolExecutor(max_workers=3, thread_name_prefix="ilex-template-write") as writer:
            for item, pair in done:
                made = self._final_transforms(item, pair, update, previous, fit)
                for written in writing:  # the image before has landed before this one is let out
                    written.result()
                entry, jobs = self._final_files(made, previous, template_image)
                out.update(entry)
                # Each in a copy of this context, so that the files join the caller's output batch.
                writing = [writer.submit(contextvars.copy_context().run, job) for job in jobs]
            for written in writing:
                written.result()
        errors = {r.pair: r.error for r in records if r.status == "failed"}
        for item in self.inputs:
            if item.id in errors:
                out[item.id] = {"error": errors[item.id]}
        return out

    def _final_transforms(self, item, pair, update: ShapeUpdate, previous, fit: AffineFit) -> dict:
        from ..image.io import load_image
        from ..image.warp_io import load_warp
        from ..transforms.jacobian import folding_fraction, jacobian_determinant

        image = _grid_of(item.path)
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

    def _final_files(self, made: dict, previous, template_image) -> tuple[dict, list[Callable[[], None]]]:
        """({id: paths and figures}, the jobs that write the files)."""
        from ..image.io import save_image
        from ..image.matrix_io import save_matrix
        from ..image.warp_io import Warp, save_warp

        item, image, fmt = made["item"], made["image"], self.settings.warp_format
        folder = self.path("images", item.id)
        os.makedirs(folder, exist_ok=True)
        paths = {
            "forward": os.path.join(folder, "warp.nii.gz"),
            "inverse": os.path.join(folder, "inverse.nii.gz"),
            "moved": os.path.join(folder, "moved.nii.gz"),
            "affine": os.path.join(folder, "affine.txt" if fmt == "itk" else "affine.lta"),
        }
        forward = Warp(made["forward"], previous.affine, image.affine, image.shape)
        inverse = Warp(made["inverse"], image.affine, previous.affine, previous.shape)

        def moved_and_affine():
            save_image(paths["moved"], made["moved"], previous.affine)
            save_matrix(paths["affine"], made["matrix"], image, template_image, "itk" if fmt == "itk" else "lta")

        jobs = [
            functools.partial(save_warp, paths["forward"], forward, fmt),
            functools.partial(save_warp, paths["inverse"], inverse, fmt),
            moved_and_affine,
        ]
        return {item.id: {**paths, "matrix": made["matrix"].tolist(), "folding_percent": made["folding"]}}, jobs

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


@dataclass(frozen=True)
class _Grid:
    """An image's grid (what its transforms' files record), read from its header alone."""

    affine: np.ndarray
    shape: tuple[int, int, int]
    path: str


def _grid_of(path: str) -> _Grid:
    import nibabel as nib

    header = nib.load(path)  # checked by check_inputs before any work
    return _Grid(np.asarray(header.affine, np.float64), tuple(int(n) for n in header.shape[:3]), path)


def _resample_world(image, world_matrix: np.ndarray, target_affine: np.ndarray, target_shape) -> np.ndarray:
    """`image` on a target grid through a world map: target voxel p takes the value at `M A_t p`."""
    import jax.numpy as jnp

    from ..registration.pipeline import resample
    from ..transforms import matrix_field

    vox = np.linalg.inv(image.affine) @ world_matrix @ target_affine
    disp = matrix_field(np.asarray(vox, np.float32), target_shape)
    return np.asarray(resample(jnp.asarray(image.data, jnp.float32), disp, "linear", jnp.float32(0.0)))


def _displacement_size(matrix: np.ndarray, affine: np.ndarray, shape) -> np.ndarray:
    """|M x - x| (mm) at every voxel of a grid: how far the world matrix `M` moves it."""
    import jax.numpy as jnp

    from .shape import displacement_size

    return np.asarray(displacement_size(jnp.zeros((*shape, 3), jnp.float32), affine, matrix))


def _lta_world(path: str, image_path: str, reference) -> np.ndarray:
    """The world matrix (the first image's world -> the image's) of round 0's LTA for an image."""
    from ..registration.affine_init import read_initial_affine

    image = _grid_of(image_path)
    vox = read_initial_affine(
        path, image.affine, reference.affine, moving_shape=image.shape, fixed_shape=reference.shape
    )
    return image.affine @ np.linalg.inv(vox) @ np.linalg.inv(reference.affine)


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
