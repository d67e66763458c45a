"""`ilex bids`'s two levels, on ilex's own runners: participant is one `ilex batch` (the batch runner,
its resume, Dask and study page), group is one `ilex template`. Nothing here registers an image itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

from ..batch import BatchSettings, Pair, write_summary
from .dataset import BidsImage
from .derivatives import (
    participant_outputs,
    summary_prefix,
    template_files,
    write_dataset_description,
    write_template_description,
)


@dataclass
class Cluster:
    """Where registrations run: this process (default), `local_workers` Dask processes, or the Dask
    scheduler at `scheduler`; `memory_resource`/`memory_bytes` as `ilex batch`'s."""

    scheduler: str | None = None
    local_workers: int | None = None
    memory_resource: str = "MEMORY"
    memory_bytes: float | None = None

    @contextlib.contextmanager
    def client(self):
        """A `distributed.Client` (None without Dask), closed with its cluster on the way out."""
        if not (self.scheduler or self.local_workers):
            yield None
            return
        from ..batch.dask import dask_client

        client, cluster = dask_client(self.scheduler, self.local_workers, self.memory_resource)
        try:
            yield client
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


@dataclass
class ParticipantResult:
    """What `participant` did: every pair's batch record, and the files that sum the run up."""

    records: list
    summary: tuple[str, str]
    report: str
    description: str
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)  # image prefix -> kind -> path


def participant(
    images: list[BidsImage],
    fixed: str,
    space: str,
    bids_dir: str,
    out_dir: str,
    settings: BatchSettings,
    *,
    suffix: str = "T1w",
    record: dict | None = None,
    cluster: Cluster | None = None,
    overwrite: bool = False,
    progress: bool = False,
    memory_check: bool = True,
) -> ParticipantResult:
    """Register each of `images` to `fixed` (template `space`) with `ilex batch`'s runner and write its
    derivatives (`derivatives.participant_outputs`), then the run's summary, its study page and
    OUT_DIR/dataset_description.json (`record`: what it records of these settings).

    As `ilex batch`: an image whose derivatives exist, made with these settings, is skipped; one made
    otherwise is redone and its record's `note` says why; one that fails is recorded and the others
    go on. Raises only what the batch raises for the whole run (weights that cannot be loaded).
    """
    from ..batch.run import run_checked
    from ..qc.study_report import write_study_report
    from ..registration.outputs import check_creatable

    out_dir = os.path.abspath(out_dir)
    check_creatable("OUTPUT_DIR", out_dir)
    pairs = [
        Pair(k, image.path, fixed, participant_outputs(image, out_dir, space, suffix), id=image.prefix)
        for k, image in enumerate(images, 1)
    ]
    cluster = cluster or Cluster()
    with cluster.client() as client:
        records = run_checked(
            pairs,
            settings,
            command="ilex bids",
            client=client,
            overwrite=overwrite,
            progress=progress,
            memory_check=memory_check,
            memory_resource=cluster.memory_resource,
            memory_bytes=cluster.memory_bytes,
        )
    prefix = summary_prefix(out_dir, space)
    summary = write_summary(records, prefix, settings)
    report = write_study_report(
        records, f"{prefix}.report.html", settings=settings.as_record(), title=f"ilex bids participant: to {space}"
    )
    description = write_dataset_description(
        out_dir, bids_dir, "participant", {**settings.as_record(), **(record or {})}
    )
    return ParticipantResult(records, summary, report, description, {p.id: p.outputs for p in pairs})


@dataclass
class GroupResult:
    """What `group` wrote: the template image, its description and study page, and the
    template's result (None when an earlier run had made it with these settings)."""

    image: str
    description: str
    report: str
    result: object = None  # TemplateResult

    @property
    def failed(self) -> list:
        return [] if self.result is None else [i for i in self.result.images if i.status == "failed"]


def group(
    images: list[BidsImage],
    name: str,
    bids_dir: str,
    out_dir: str,
    *,
    work_dir: str | None = None,
    initial: str | None = None,
    record: dict | None = None,
    cluster: Cluster | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    suffix: str = "T1w",
    **template_options,
) -> GroupResult:
    """Build a study template `name` of `images` with `ilex template` (`template_options`: method,
    weights, hyper, steps, extent, rounds, ... as `build_template` takes them; `initial` a starting
    template) in `work_dir` (default OUT_DIR/sourcedata/ilex-template/tpl-NAME, which pybids and
    the BIDS validator leave out), then write it as a TemplateFlow template, OUT_DIR/tpl-NAME/
    (`derivatives.template_files`), with its study page, and record the settings in
    dataset_description.json. A template already written with the same settings and images is kept
    as it is; a build interrupted in `work_dir` resumes (`build_template`); a template made from other
    images or settings is made again (in the default `work_dir`, the earlier build's folder is removed
    first; `build_template` refuses to reuse a `work_dir` of another build).
    """
    import json

    from .._atomic import atomic_file, output_batch
    from ..qc.study_report import read_summary, write_study_report
    from ..registration.outputs import check_creatable
    from ..template import TemplateInput, build_template

    out_dir = os.path.abspath(out_dir)
    check_creatable("OUTPUT_DIR", out_dir)
    files = template_files(out_dir, name, 1, suffix)
    own_work_dir = work_dir is None
    work_dir = os.path.abspath(work_dir or os.path.join(out_dir, "sourcedata", "ilex-template", f"tpl-{name}"))
    settings = json.loads(
        json.dumps(
            {
                # what decides the template (the compilation cache does not: a rerun without it keeps it)
                **{k: v for k, v in template_options.items() if k not in ("compilation_cache",)},
                "initial": initial,
                **(record or {}),
            }
        )
    )
    participants = [image.prefix for image in images]
    log = log or (lambda text: None)
    try:
        with open(files["description"], encoding="utf-8") as f:
            made = json.load(f)
        if (
            made.get("IlexSettings") == settings
            and made.get("Participants") == participants
            and all(os.path.isfile(files[k]) for k in ("image", "report"))
        ):
            log(f"ilex bids: {files['folder']} exists, made from these images with these settings (kept)")
            return GroupResult(files["image"], files["description"], files["report"])
        log(f"ilex bids: {files['folder']} was made from other images or with other settings: making it again")
        if own_work_dir and os.path.isdir(work_dir):
            # ilex's own folder of a finished build of other settings (`build_template` would refuse to reuse it)
            log(f"ilex bids: removing that build's folder {work_dir}")
            shutil.rmtree(work_dir)
    except (OSError, ValueError, AttributeError):
        pass
    inputs = [TemplateInput(image.prefix, image.path) for image in images]
    cluster = cluster or Cluster()
    with cluster.client() as client:
        result = build_template(
            inputs, work_dir, initial=initial, client=client, log=log, progress=progress, **template_options
        )
    os.makedirs(files["folder"], exist_ok=True)
    with output_batch():
        with atomic_file(files["image"], suffix=".nii.gz") as tmp:
            shutil.copyfile(result.path, tmp)
        records, batch_settings, _ = read_summary(os.path.join(work_dir, "qc", "summary.json"))
        write_study_report(
            records,
            files["report"],
            settings=batch_settings,
            rounds=os.path.join(work_dir, "rounds.csv"),
            title=f"ilex bids group: template {name}",
        )
    # Last: the description is what tells a rerun that the template above was made with these settings.
    write_template_description(files["description"], name, files["image"], settings, participants)
    write_dataset_description(out_dir, bids_dir, "group", {"template": name, **settings})
    return GroupResult(files["image"], files["description"], files["report"], result)
