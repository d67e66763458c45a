"""The rounds of a template build: round 0, the affine average of the images (or the initial
template), and rounds 1..K, each one batch of registrations to the template before it, reduced
into the next template. Each round is committed (its template, a row of rounds.csv, state.json)
before its intermediate files are deleted."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from .._atomic import output_batch
from ..errors import IlexError
from .budget import RoundBudget, check_budget, image_voxels, round_budget, task_resources
from .final import final_outputs, image_grid
from .linear import linear_round
from .partial import aligned_share, warp_share
from .partial import flagged_rules as _flagged_rules
from .round_sum import RoundSum
from .settings import TemplateSettings
from .shape import MeanTransform, ShapeUpdate, head_mask, matrix_power, normalised, relative_change
from .shape import sharpen as sharpen_image
from .state import INTERMEDIATE, TemplateFolder


class Rounds:
    """What every round shares: the `inputs`, their `folder`, the `settings`, the `initial`
    template (a path, or None), the Dask `client` (None: this machine), and where the build
    reports: `log` (a line per round and per failed image), `progress` (the batch's bar) and
    `on_round` (each round's row). Keeps one warm `Registrar` per stage across rounds.
    `qc_every_round`: every round's registrations get their full QC pages (OUTDIR/qc/round-K/ID),
    not only the last round's; else an intermediate round writes each pair's qc.json alone (the
    figures and verdict the rules judge it by), deleted with the round's own files."""

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
        memory_resource: str = "MEMORY",
        memory_check: bool = True,
        qc_every_round: bool = False,
    ):
        self.inputs = inputs
        self.folder = folder
        self.settings = settings
        self.initial = initial
        self.client = client
        self.log = log or (lambda text: None)
        self.progress = progress
        self.on_round = on_round
        self.memory_resource = memory_resource
        self.memory_check = memory_check
        self.qc_every_round = qc_every_round
        self._registrars: dict[str, object] = {}
        self._voxels: list[int] | None = None
        self._parallel = 0.0  # this round's seconds in its batches and waiting for its sums

    # -- batches ---------------------------------------------------------------------------------------
    def run(self, pairs, method, name: str, on_record=None, final: bool = True):
        """One batch of registrations (local, or on the Dask client); returns its records.
        `on_record` is called with each record as its pair finishes (skipped pairs: not).
        `final` False: a round before the last (`TemplateSettings.batch`)."""

        settings = self.settings.batch(method, final)
        name = name if final else f"{name} (intermediate)"  # its own prepared methods
        started = time.perf_counter()
        try:
            return self._run(pairs, method, name, on_record, settings)
        finally:
            self._parallel += time.perf_counter() - started

    def _run(self, pairs, method, name, on_record, settings):
        from ..batch import run_batch
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
            on_record=on_record,
            memory_resource=self.memory_resource,
        )

    def round_sum(self, budget: RoundBudget) -> RoundSum:
        """A round's reduction: on this machine, or on the Dask client's workers, each task
        declaring the memory `budget` gives it."""
        share, summing, _ = task_resources(budget, self.client, self.memory_resource)
        return RoundSum(self.client, share, summing)

    def budget(self, k: int, method, template_voxels: int, todo: int, final: bool, warps: bool = True) -> RoundBudget:
        """Round `k`'s memory and disk (`budget.py`), checked before it starts and logged."""
        from ..batch.pairs import Pair

        if self._voxels is None:
            self._voxels = image_voxels(item.path for item in self.inputs)
        probe = [Pair(0, self.inputs[0].path, self.inputs[0].path)]
        registration = self.settings.batch(method).memory_estimate(probe)
        budget = round_budget(k, registration, template_voxels, self._voxels, todo, final, warps)
        check_budget(budget, self.folder.outdir, self.client, self.memory_resource, self.memory_check)
        self.log(f"ilex template: {budget.describe()}")
        return budget

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

    def qc_outputs(self, k: int, final: bool, directory: str, image_id: str) -> dict[str, str]:
        """Round `k`'s QC output for an image: the last round's pages stay (OUTDIR/qc/ID); with
        `qc_every_round` the others' too (OUTDIR/qc/round-K/ID); else an intermediate round writes
        qc.json alone (`qc_figures`: what the rules judge it by), in `directory`/qc, deleted with it."""
        if final:
            return {"qc": self.folder.path("qc", image_id)}
        if self.qc_every_round:
            return {"qc": self.folder.path("qc", f"round-{k}", image_id)}
        return {"qc_figures": os.path.join(directory, "qc", image_id)}

    def affine_pairs(self, directory: str, target: str, qc_round: int | None = None, final: bool = False) -> list:
        """Every image against `target` for an affine stage, its matrix an LTA in `directory`/affine
        (an affine stage answers with a matrix, never a warp to fit one to); with `qc_round`, each
        pair's QC output as round `qc_round` (`final`: the last) writes it (`qc_outputs`)."""
        from ..batch.pairs import Pair

        os.makedirs(os.path.join(directory, "affine"), exist_ok=True)
        pairs = []
        for k, item in enumerate(self.inputs):
            outputs = {"trans": os.path.join(directory, "affine", f"{item.id}.lta")}
            if qc_round is not None:
                outputs.update(self.qc_outputs(qc_round, final, directory, item.id))
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
                page = os.path.join(qc_directory(pair), "report.html" if "qc" in pair.outputs else "qc.json")
                self.log(
                    f"ilex template: round {k}: {pair.label} ({pair.moving}) is flagged by the rules "
                    f"({', '.join(names)}; {'its page' if 'qc' in pair.outputs else 'its figures'}: {page}), {what}"
                )
        return flags

    # -- round 0: the affine average -----------------------------------------------------------------
    def round0(self, state: dict) -> None:
        from ..image.io import load_image, save_image

        start = time.perf_counter()
        self._parallel = 0.0
        if self.initial is not None:
            image = load_image(self.initial, what="initial template")
            save_image(self.folder.round_template(0), normalised(image.data), image.affine)
            self.folder.commit(state, 0, None)
            self.log(f"ilex template: round 0: the initial template is {self.initial}")
            return
        if self.settings.linear:  # a linear template's round 0: every image to the first (`linear.py`)
            linear_round(self, state, 0, 0)
            return
        reference = load_image(self.inputs[0].path, what="image")
        method = self.settings.affine_method()
        budget = self.budget(0, method, reference.data.size, len(self.inputs), False, warps=False)
        # the first image is the reference
        pairs = self.affine_pairs(self.folder.round_dir(0), reference.path, qc_round=0)[1:]
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
        kept = [item for item in self.inputs if item.id in matrices]
        where = {r.pair: r.worker for r in records}
        # Each image moved to the unbiased mid-space, and its similarity to the first image once aligned,
        # where its affine ran; summed exactly.
        with self.round_sum(budget) as summed:
            for index, item in enumerate(kept):
                first = item is self.inputs[0]
                summed.add(
                    aligned_share,
                    index,
                    item.path,
                    matrices[item.id] @ back,
                    None if first else matrices[item.id],
                    reference.path,
                    len(kept),
                    worker=where.get(item.id),
                )
            partial = summed.result()
        similarities = [partial.similarities[k] for k in sorted(partial.similarities)]
        template = partial.mean_image()
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
        row.update(cluster_state(records, self._parallel + summed.waited, row["seconds"], budget))
        self.folder.commit(state, 0, row)
        self.announce(row, 0)

    # -- rounds 1..K --------------------------------------------------------------------------------------
    def round(self, state: dict, k: int, rounds: int) -> None:
        from ..batch.pairs import Pair
        from ..image.io import load_image, save_image

        if self.settings.linear:
            linear_round(self, state, k, rounds)
            return
        start = time.perf_counter()
        self._parallel = 0.0
        final = k == rounds
        previous = load_image(self.folder.round_template(k - 1), what="template")
        directory = self.folder.round_dir(k)
        kinds = ["moved", "warps"] + (["inverse"] if final else [])
        for kind in kinds:
            os.makedirs(os.path.join(directory, kind), exist_ok=True)
        todo = sum(not os.path.isfile(os.path.join(directory, "warps", f"{i.id}{INTERMEDIATE}")) for i in self.inputs)
        budget = self.budget(k, None, previous.data.size, todo, final)
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
            # Every round's registrations are judged by the rules: the last round's QC pages stay (OUTDIR/qc),
            # the others' figures go with the round's own files (`qc_outputs`).
            outputs.update(self.qc_outputs(k, final, directory, item.id))
            if final:
                outputs["inverse"] = os.path.join(directory, "inverse", f"{item.id}{INTERMEDIATE}")
            problem = None if not records_before or inits[item.id] else "its affine stage failed"
            pairs.append(Pair(j, item.path, previous.path, outputs, init=inits[item.id], id=item.id, problem=problem))
        mask = head_mask(previous.data)
        by_index = {pair.index: pair for pair in pairs}
        with self.round_sum(budget) as summed:

            def share(record):
                # Where its registration ran, once its files have landed (skipped pairs: after the batch).
                if record.status == "failed":
                    return
                pair = by_index[record.index]
                summed.add(
                    warp_share,
                    pair.index,
                    pair.outputs["trans"],
                    pair.outputs["out_moving"],
                    previous.path,
                    len(pairs),
                    qc_directory(pair),
                    self.settings.exclude_flagged,
                    worker=record.worker,
                )

            records = self.run(pairs, None, "main", on_record=share, final=final)
            for r in records:
                if r.status == "skipped":
                    share(r)
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
            partial = summed.result()
            if partial.count < 2:
                raise IlexError(
                    f"round {k}: fewer than 2 images left to average once the flagged ones are left out "
                    "(--exclude-flagged); see the flags above"
                )
        mean = partial.mean_transform(previous.affine, mask)
        update = ShapeUpdate(mean, previous.shape, self.settings.step)
        template = update.image(partial.mean_image())
        if self.settings.sharpen:
            template = sharpen_image(template)
        mean_mm, max_mm = update.mean_displacement(mask)
        row = {
            "round": k,
            "mean_displacement_mm": mean_mm,
            "max_displacement_mm": max_mm,
            "mean_similarity": partial.mean_similarity(),
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
                outputs_started = time.perf_counter()
                state["images"] = final_outputs(
                    self.folder,
                    self.inputs,
                    self.settings.warp_format,
                    done,
                    records,
                    update,
                    previous,
                    template,
                    self.client,
                    task_resources(budget, self.client, self.memory_resource)[2],
                )
                if self.client is not None:  # made on the workers: the client waited, as for the sums
                    self._parallel += time.perf_counter() - outputs_started
                save_image(self.folder.template, template, previous.affine)
        row["seconds"] = time.perf_counter() - start
        # The serial part after the registrations: what is left of the sums, the update, the final outputs.
        row["reduce_seconds"] = time.perf_counter() - reducing
        row.update(cluster_state(records + records_before, self._parallel + summed.waited, row["seconds"], budget))
        self.folder.commit(state, k, row)
        self.announce(row, rounds)
        if final:
            self.study_page(records)

    def study_page(self, records, method=None) -> str:
        """The study page of the last round, OUTDIR/qc/summary.report.html (what `ilex report
        OUTDIR/qc/summary.csv --rounds OUTDIR/rounds.csv` draws again): every image's page, the
        failed images and the convergence from rounds.csv, written after the last round's row;
        its settings those of `method` (default the template's), the method that ran."""
        from ..qc.study_report import write_study_report

        path = write_study_report(
            records,
            self.folder.path("qc", "summary.report.html"),
            settings=self.settings.batch(method).as_record(),
            rounds=self.folder.path("rounds.csv"),
            title="Template",
        )
        self.log(f"ilex template: study page {path}")
        return path


def qc_directory(pair) -> str | None:
    """The directory of a pair's qc.json: its QC pages' (`qc`) or its figures' alone (`qc_figures`)."""
    return pair.outputs.get("qc") or pair.outputs.get("qc_figures")


def flagged_rules(pair) -> list[str]:
    """The names of the rules a pair's registration fails, read from its qc.json (none without one)."""
    return _flagged_rules(qc_directory(pair))


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


def cluster_state(records, parallel: float, seconds: float, budget: RoundBudget) -> dict:
    """A round's row of the cluster's state: how many `workers` registered its images, each
    worker's busy time (the time covered by its registrations, from their start to their files
    landed, overlaps counted once: a local batch writes one pair's files while the next
    registers; mean and max over workers, and per worker in `worker_seconds`), its waiting time
    (the `parallel` part of the round, in batches and waiting for the sums and, on Dask, for the
    final outputs, less its busy time; mean over workers), the serial part
    (`seconds` less `parallel`: the client's own work, alone) and its share of the round, and
    the `budget`'s memory per registration and per share (GiB) and disk for the round (GiB)."""
    import datetime

    spans: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        if r.status == "done" and r.started and r.finished:
            interval = tuple(datetime.datetime.fromisoformat(t).timestamp() for t in (r.started, r.finished))
            spans.setdefault(r.worker or "?", []).append(interval)
    busy = {worker: _union_length(intervals) for worker, intervals in spans.items()}
    waiting = [max(parallel - b, 0.0) for b in busy.values()]
    serial = max(seconds - parallel, 0.0)
    return {
        "workers": len(busy),
        "busy_seconds_mean": float(np.mean(list(busy.values()))) if busy else None,
        "busy_seconds_max": max(busy.values(), default=None),
        "waiting_seconds_mean": float(np.mean(waiting)) if waiting else None,
        "serial_seconds": serial,
        "serial_share": serial / seconds if seconds > 0 else None,
        "worker_seconds": dict(sorted(busy.items())),
        "memory_registration_gib": budget.registration / 2**30,
        "memory_share_gib": budget.share / 2**30,
        "disk_round_gib": budget.disk / 2**30,
    }


def _union_length(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of (start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total
