"""The rounds of a template build: round 0, the affine average of the images (or the initial
template), and rounds 1..K, each one batch of registrations to the template before it, reduced
into the next template. Each round is committed (its template, a row of rounds.csv, state.json)
before its intermediate files are deleted."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .._atomic import output_batch
from ..errors import IlexError
from .final import final_outputs, image_grid
from .round_sum import RoundSum
from .settings import TemplateSettings
from .shape import MeanTransform, ShapeUpdate, correlation, head_mask, matrix_power, normalised, relative_change
from .shape import sharpen as sharpen_image
from .state import INTERMEDIATE, TemplateFolder


class Rounds:
    """What every round shares: the `inputs`, their `folder`, the `settings`, the `initial`
    template (a path, or None), the Dask `client` (None: this machine), and where the build
    reports: `log` (a line per round and per failed image), `progress` (the batch's bar) and
    `on_round` (each round's row). Keeps one warm `Registrar` per stage across rounds."""

    def __init__(
        self,
        inputs,
        folder: TemplateFolder,
        settings: TemplateSettings,
        initial: str | None,
        client,
        log: Callable[[str], None] | None,
        progress: bool,
        on_round: Callable[[dict], None] | None,
    ):
        self.inputs = inputs
        self.folder = folder
        self.settings = settings
        self.initial = initial
        self.client = client
        self.log = log or (lambda text: None)
        self.progress = progress
        self.on_round = on_round
        self._registrars: dict[str, object] = {}

    # -- batches ---------------------------------------------------------------------------------------
    def run(self, pairs, method, name: str, on_record=None):
        """One batch of registrations (local, or on the Dask client); returns its records.
        `on_record` is called with each record as its pair finishes (skipped pairs: not)."""
        from ..batch import run_batch
        from ..registration.outputs import outputs_complete

        settings = self.settings.batch(method)

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

    def announce(self, row: dict, rounds: int) -> None:
        similarity = "n/a" if row["mean_similarity"] is None else f"{row['mean_similarity']:.4f}"
        change = "" if row["template_change"] is None else f", template change {100 * row['template_change']:.2f} %"
        total = f"/{rounds}" if rounds else " (affine average)"
        flagged = row.get("flagged") or ""
        self.log(
            f"ilex template: round {row['round']}{total}: {row['averaged']} averaged, "
            f"{len(row['failed'].split()) if row['failed'] else 0} failed, "
            f"{len(flagged.split())} flagged{' (' + flagged + ')' if flagged else ''}; "
            f"mean transform {row['mean_displacement_mm']:.3f} mm "
            f"(max {row['max_displacement_mm']:.3f} mm); similarity {similarity}{change}; {row['seconds']:.1f} s"
        )
        if self.on_round is not None:
            self.on_round(row)

    def affine_pairs(self, directory: str, target: str, qc: bool = False) -> list:
        """Every image against `target` for an affine stage, its matrix an LTA in `directory`/affine
        (an affine stage answers with a matrix, never a warp to fit one to); with `qc`, each pair's
        QC directory in `directory`/qc (what the rules judge it by)."""
        from ..batch.pairs import Pair

        os.makedirs(os.path.join(directory, "affine"), exist_ok=True)
        pairs = []
        for k, item in enumerate(self.inputs):
            outputs = {"trans": os.path.join(directory, "affine", f"{item.id}.lta")}
            if qc:
                outputs["qc"] = os.path.join(directory, "qc", item.id)
            pairs.append(Pair(k, item.path, target, outputs, init=item.init, id=item.id))
        return pairs

    def report_flags(self, k: int, pairs, records) -> dict[str, list[str]]:
        """The images of round `k` whose registration the rules flag (`qc.verdict`, from each
        pair's qc.json): {id: the rules failed}, each named on the log, in the order of the pairs."""
        status = {r.pair: r.status for r in records}
        flags = {}
        for pair in pairs:
            if status.get(pair.label, "failed") == "failed":
                continue
            names = flagged_rules(pair)
            if names:
                flags[pair.label] = names
                what = (
                    "left out of this round's average (--exclude-flagged)"
                    if self.settings.exclude_flagged
                    else "kept in the average (--exclude-flagged would leave it out)"
                )
                self.log(
                    f"ilex template: round {k}: {pair.label} ({pair.moving}) is flagged by the rules "
                    f"({', '.join(names)}; its page: {os.path.join(pair.outputs['qc'], 'report.html')}), {what}"
                )
        return flags

    # -- round 0: the affine average -----------------------------------------------------------------
    def round0(self, state: dict) -> None:
        from ..image.io import load_image, save_image

        start = time.perf_counter()
        if self.initial is not None:
            image = load_image(self.initial, what="initial template")
            save_image(self.folder.round_template(0), normalised(image.data), image.affine)
            self.folder.commit(state, 0, None)
            self.log(f"ilex template: round 0: the initial template is {self.initial}")
            return
        reference = load_image(self.inputs[0].path, what="image")
        method = self.settings.affine_method()
        pairs = self.affine_pairs(self.folder.round_dir(0), reference.path, qc=True)[1:]  # the first is the reference
        records = self.run(pairs, method, "affine")
        failed = self.report_failures(0, records)
        flags = self.report_flags(0, pairs, records)
        mask = head_mask(reference.data)
        mean = MeanTransform(reference.affine, mask)
        matrices = {self.inputs[0].id: np.eye(4)}
        mean.add_matrix(np.eye(4))
        by_id = {r.pair: r for r in records}
        for item, pair in zip(self.inputs[1:], pairs, strict=True):
            record = by_id.get(item.id)
            if record is not None and record.status == "failed":
                continue
            if self.settings.exclude_flagged and item.id in flags:
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
        save_image(self.folder.round_template(0), template, reference.affine)
        state["affines_round0"] = {key: m.tolist() for key, m in matrices.items()}
        row = {
            "round": 0,
            "mean_displacement_mm": float(size.mean()),
            "max_displacement_mm": float(size.max()),
            "mean_similarity": float(np.mean(similarities)) if similarities else None,
            "template_change": None,
            "averaged": len(matrices),
            "failed": " ".join(failed),
            "flagged": " ".join(flags),
            "seconds": time.perf_counter() - start,
            "peak_memory_gib": max((r.peak_memory_gib or 0.0 for r in records), default=None),
        }
        self.folder.commit(state, 0, row)
        self.announce(row, 0)

    # -- rounds 1..K --------------------------------------------------------------------------------------
    def round(self, state: dict, k: int, rounds: int) -> None:
        from ..batch.pairs import Pair
        from ..image.io import load_image, save_image

        start = time.perf_counter()
        final = k == rounds
        previous = load_image(self.folder.round_template(k - 1), what="template")
        directory = self.folder.round_dir(k)
        kinds = ["moved", "warps"] + (["inverse"] if final else [])
        for kind in kinds:
            os.makedirs(os.path.join(directory, kind), exist_ok=True)
        inits = {item.id: item.init for item in self.inputs}
        records_before = []
        if self.settings.prior_affine:
            stage = self.affine_pairs(directory, previous.path)
            records_before = self.run(stage, self.settings.prior_affine, "affine")
            inits = {r.pair: (r.outputs["trans"] if r.status != "failed" else None) for r in records_before}
        pairs = []
        for j, item in enumerate(self.inputs):
            outputs = {
                "out_moving": os.path.join(directory, "moved", f"{item.id}{INTERMEDIATE}"),
                "trans": os.path.join(directory, "warps", f"{item.id}{INTERMEDIATE}"),
            }
            # Every round's registrations are judged by the rules: the last round's QC stays (OUTDIR/qc),
            # the others' go with the round's own files.
            outputs["qc"] = self.folder.path("qc", item.id) if final else os.path.join(directory, "qc", item.id)
            if final:
                outputs["inverse"] = os.path.join(directory, "inverse", f"{item.id}{INTERMEDIATE}")
            problem = None if not records_before or inits[item.id] else "its affine stage failed"
            pairs.append(Pair(j, item.path, previous.path, outputs, init=inits[item.id], id=item.id, problem=problem))
        mask = head_mask(previous.data)
        leave_out = (lambda pair: bool(flagged_rules(pair))) if self.settings.exclude_flagged else None
        with RoundSum(previous, mask, pairs, leave_out) as summed:
            records = self.run(pairs, None, "main", on_record=summed.offer)
            failed = self.report_failures(k, records)
            flags = self.report_flags(k, pairs, records)
            if final:
                from ..batch import write_summary

                os.makedirs(self.folder.path("qc"), exist_ok=True)
                write_summary(records, self.folder.path("qc", "summary"), self.settings.batch())
            reducing = time.perf_counter()
            done = [
                (item, pair) for item, pair, r in zip(self.inputs, pairs, records, strict=True) if r.status != "failed"
            ]
            if len(done) < 2:
                raise IlexError(
                    f"round {k}: fewer than 2 images registered; see the errors above (a rerun resumes this round)"
                )
            mean, total, similarities = summed.result(records)
            if mean.count < 2:
                raise IlexError(
                    f"round {k}: fewer than 2 images left to average once the flagged ones are left out "
                    "(--exclude-flagged); see the flags above"
                )
        update = ShapeUpdate(mean, previous.shape, self.settings.step)
        template = update.image(total / mean.count)
        if self.settings.sharpen:
            template = sharpen_image(template)
        mean_mm, max_mm = update.mean_displacement(mask)
        row = {
            "round": k,
            "mean_displacement_mm": mean_mm,
            "max_displacement_mm": max_mm,
            "mean_similarity": float(np.mean(similarities)),
            "template_change": relative_change(template, previous.data, mask),
            "averaged": mean.count,
            "failed": " ".join(failed),
            "flagged": " ".join(flags),
            "seconds": 0.0,
            "peak_memory_gib": max((r.peak_memory_gib or 0.0 for r in records + records_before), default=None),
        }
        with output_batch():
            save_image(self.folder.round_template(k), template, previous.affine)
            if final:
                state["images"] = final_outputs(
                    self.folder, self.inputs, self.settings.warp_format, done, records, update, previous, template
                )
                save_image(self.folder.template, template, previous.affine)
        row["seconds"] = time.perf_counter() - start
        # The serial part after the registrations: what is left of the sums, the update, the final outputs.
        row["reduce_seconds"] = time.perf_counter() - reducing
        self.folder.commit(state, k, row)
        self.announce(row, rounds)
        if final:
            self.study_page(records)

    def study_page(self, records) -> str:
        """The study page of the last round, OUTDIR/qc/summary.report.html (what `ilex report
        OUTDIR/qc/summary.csv --rounds OUTDIR/rounds.csv` draws again): every image's page, the
        failed images and the convergence from rounds.csv, written after the last round's row."""
        from ..qc.study_report import write_study_report

        path = write_study_report(
            records,
            self.folder.path("qc", "summary.report.html"),
            settings=self.settings.batch().as_record(),
            rounds=self.folder.path("rounds.csv"),
            title="Template",
        )
        self.log(f"ilex template: study page {path}")
        return path


def flagged_rules(pair) -> list[str]:
    """The names of the rules a pair's registration fails, read from its qc.json (none without one)."""
    import json

    from ..qc.verdict import failed_rules

    qc = pair.outputs.get("qc")
    try:
        with open(os.path.join(qc, "qc.json"), encoding="utf-8") as f:
            record = json.load(f)
    except (TypeError, OSError, ValueError):
        return []
    return [r.name for r in failed_rules(record)] if isinstance(record, dict) else []


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

    image = image_grid(image_path)
    vox = read_initial_affine(
        path, image.affine, reference.affine, moving_shape=image.shape, fixed_shape=reference.shape
    )
    return image.affine @ np.linalg.inv(vox) @ np.linalg.inv(reference.affine)
