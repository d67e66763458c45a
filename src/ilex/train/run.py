"""`ilex.train`: a run from settings to a bundle, with checkpoints, resume, validation and a log."""

from __future__ import annotations

import dataclasses
import math
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp

from ..errors import FileProblem, IlexError, OptionError
from ..models.synthmorph_deform import SynthMorphDeform
from .checkpoint import latest_checkpoint, read_checkpoint, write_checkpoint
from .data import TrainingData
from .init import initialise
from .log import StepLog
from .settings import RUN_CONFIG, TrainSettings, read_run_settings, settings_from, write_run_settings
from .step import device_mesh, make_step, optimiser_for, projection_scale

__all__ = ["TrainResult", "TrainingError", "build_model", "train"]


class TrainingError(IlexError):
    """A run that had to stop (a non-finite loss); the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a run leaves: its folder, the bundle, the trained model and the steps done."""

    run_dir: str
    bundle: str
    model: SynthMorphDeform
    steps: int
    validation: list[dict]


def build_model(settings: TrainSettings, key: jax.Array) -> SynthMorphDeform:
    """The hypernetwork a run starts from: `settings.init`'s weights, or new ones of `settings.widths`."""
    if settings.init is None:
        enc, dec, add = settings.unet_widths
        shapes = SynthMorphDeform(enc, dec, add, nb_hyp_units=settings.hyper_units, key=key)
        return initialise(shapes, jax.random.fold_in(key, 1))
    from ..bundle import load

    model = load(settings.init)
    if not isinstance(model, SynthMorphDeform):
        raise FileProblem(
            settings.init,
            f"holds a {type(model).__name__}, not SynthMorph's deformable hypernetwork (synthmorph.deform.3 "
            "layout); fine-tuning starts from such weights or an ilex bundle of them",
        )
    if settings.widths is not None and settings.unet_widths != (model.enc_nf, model.dec_nf, model.add_nf):
        raise OptionError(
            f"--widths {list(settings.widths)} differ from the widths of {settings.init} "
            f"({list(model.enc_nf + model.dec_nf + model.add_nf)}); leave --widths out to fine-tune it",
            argument="widths",
        )
    return model


def _prepare_run_dir(run_dir: str, settings: TrainSettings) -> str | None:
    """The checkpoint to resume from (None: a new run). Refuses to overwrite another run."""
    checkpoint = latest_checkpoint(run_dir) if os.path.isdir(run_dir) else None
    if settings.resume:
        if checkpoint is None:
            raise FileProblem(run_dir, "has no checkpoint to resume from; run without --resume to start")
        before = read_run_settings(run_dir)
        if before is not None:
            changed = settings.recipe_differences(before)
            if changed:
                raise OptionError(
                    f"--resume with other settings than the run in {run_dir} ({', '.join(changed)}); "
                    "start a new run folder instead"
                )
    elif os.path.isdir(run_dir) and os.listdir(run_dir):
        raise FileProblem(run_dir, "exists and is not empty; choose a new run folder, or --resume this run")
    os.makedirs(run_dir, exist_ok=True)
    write_run_settings(run_dir, settings)
    return checkpoint


def train(run_dir: str | os.PathLike, settings: TrainSettings | None = None, *, config=None, show=True, **options):
    """Train SynthMorph's deformable hypernetwork and write `run_dir/bundle` (docs/train.md).

    `settings` (a `TrainSettings`), or a config file and/or keyword options of the same names.
    Everything is checked before the first step. Returns a `TrainResult`.
    """
    from .card import write_trained_bundle
    from .report import write_training_page
    from .validation import Validator

    run_dir = os.path.abspath(os.fspath(run_dir))
    if settings is None:
        saved = os.path.join(run_dir, RUN_CONFIG)
        if options.get("resume") and config is None and os.path.isfile(saved):
            config = saved  # `--resume` alone continues the run as it was started
        settings = settings_from(config, **options)
    elif config is not None:
        raise OptionError("give settings or a config file, not both")
    elif options:
        settings = dataclasses.replace(settings, **options)
    data = TrainingData.from_settings(settings)  # label maps checked here, before anything is written
    validator = Validator(settings, data)
    checkpoint = _prepare_run_dir(run_dir, settings)

    run_key = jax.random.key(settings.seed)
    model = build_model(settings, jax.random.fold_in(run_key, 0))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    # Strong float32 leaves: a weakly typed leaf would change type after one update and compile the step again.
    params = jax.tree.map(lambda x: jnp.array(x, dtype=jnp.float32), params)
    # From the starting weights, which a resumed run rebuilds alike (same seed, same --init).
    scale = projection_scale(model)
    optimiser = optimiser_for(settings, scale)
    opt_state = optimiser.init(params)
    start = 0
    if checkpoint is not None:
        start, params, opt_state, run_key, _ = read_checkpoint(checkpoint, params, opt_state)
    mesh = device_mesh(settings.batch_size)
    mesh = mesh if mesh.size > 1 else None
    step = make_step(static, settings, mesh, scale)
    log = StepLog(
        run_dir,
        start_step=start,
        total=settings.steps,
        every=settings.log_every or settings.checkpoint_every,
        show=show,
    )
    if start:
        log.note(f"ilex train: resuming {run_dir} after step {start}")
    last_good = start
    try:
        for index in range(start, settings.steps):
            began = time.perf_counter()
            new_params, new_opt, out = step(params, opt_state, data, run_key, index)
            figures = [float(x) for x in (out.loss, out.data, out.smoothness, out.hyper)]
            if not all(math.isfinite(x) for x in figures[:3]):
                raise TrainingError(
                    f"the loss is not finite at step {index + 1} (loss {figures[0]}, data {figures[1]}, "
                    f"smoothness {figures[2]}); the run stopped, its last good checkpoint is step {last_good} "
                    f"in {run_dir}; try a lower --learning-rate"
                )
            params, opt_state = new_params, new_opt
            done = index + 1
            log.write(done, *figures, time.perf_counter() - began)
            if done % settings.checkpoint_every == 0 or done == settings.steps:
                write_checkpoint(run_dir, done, params, opt_state, run_key, settings.as_dict())
                last_good = done
                validator.score(done, eqx.combine(params, static), run_dir)
    finally:
        log.close()
    model = eqx.combine(params, static)
    bundle = write_trained_bundle(run_dir, model, settings, data, validator.rows, steps=settings.steps)
    write_training_page(run_dir, settings, validator)
    return TrainResult(run_dir, bundle, model, settings.steps, validator.rows)
