"""`ilex.Settings`: how to register, declared, defaulted and checked once for every layer."""

import dataclasses

import numpy as np
import pytest
from test_bad_inputs import _head

import ilex
from ilex.batch import BatchSettings
from ilex.batch.pairs import Pair
from ilex.errors import OptionError
from ilex.image.io import Image
from ilex.registration.session import Registrar
from ilex.template import TemplateSettings

FAST = {"levels": (4,), "iterations": (2,)}

# One value for every field, none of them a default: a layer that drops a field shows.
EVERY_FIELD = {
    "method": "optimize",
    "hyper": 0.3,
    "steps": 5,
    "extent": 64,
    "algorithm": "direct",
    "clip_percentile": 99.0,
    "options": {"similarity": "mi", "levels": [4, 2]},
}


@pytest.mark.parametrize(
    "changes, argument",
    [({"hyper": 1.5}, "hyper"), ({"hyper": -0.1}, "hyper"), ({"steps": 0}, "steps"), ({"extent": 48}, "extent")],
)
def test_values_are_checked_when_made(changes, argument):
    with pytest.raises(OptionError) as e:
        ilex.Settings(**changes)
    assert e.value.argument == argument
    with pytest.raises(OptionError):  # the study settings are the same object, checked the same way
        BatchSettings(**changes)


def test_settings_compare_and_hash_by_value():
    a = ilex.Settings(method="optimize", options={"levels": [4, 2], "similarity": "mi"})
    b = ilex.Settings(method="optimize", options=(("similarity", "mi"), ("levels", (4, 2))))
    assert a == b and hash(a) == hash(b)
    assert a.optimiser_options == {"levels": (4, 2), "similarity": "mi"}


def test_of_keeps_what_is_not_given_and_reads_other_keywords_as_options():
    base = ilex.Settings(method="optimize", hyper=0.7, options={"similarity": "lncc"})
    assert ilex.Settings.of(base, hyper=None, steps=None) is base
    changed = ilex.Settings.of(base, extent=64, similarity="mi", levels=[4])
    assert (changed.method, changed.hyper, changed.extent) == ("optimize", 0.7, 64)
    assert changed.optimiser_options == {"similarity": "mi", "levels": (4,)}
    assert ilex.Settings.of(None, hyper=0.2) == ilex.Settings(hyper=0.2)


def test_defaults_come_from_a_method_object_where_it_has_its_own():
    from ilex.registration.methods import OptimizeMethod

    method = OptimizeMethod(hyper=0.8, steps=4)
    s = ilex.Settings(method=method)
    assert (s.effective_hyper, s.effective_steps) == (0.8, 4)
    assert (ilex.Settings().effective_hyper, ilex.Settings().effective_steps) == (0.5, 7)


def test_study_settings_carry_every_field():
    template = TemplateSettings(**EVERY_FIELD, weights=(), step=0.5)
    batch = template.batch()
    assert isinstance(batch, BatchSettings) and isinstance(batch, ilex.Settings)
    assert batch.registration_settings() == template.registration_settings() == ilex.Settings(**EVERY_FIELD)
    assert batch.warp_format == "freesurfer"  # a round's intermediate warps
    assert {f.name for f in dataclasses.fields(ilex.Settings)} <= {f.name for f in dataclasses.fields(template)}


def test_a_batch_row_takes_the_settings_optimiser_options():
    settings = BatchSettings(weights=(), method="optimize", options={"similarity": "mi", "levels": [4]})
    method, hyper, options = settings.combination(Pair(0, "m", "f", options={"iterations": [3]}))
    assert (method, hyper) == ("optimize", 0.5)
    assert dict(options) == {"similarity": "mi", "levels": (4,), "iterations": (3,)}


def test_one_place_builds_a_warm_registrar(monkeypatch):
    # ilex batch, each Dask worker and Registrar.from_weights(prepare=...) all build the same way.
    from ilex.batch.dask import IlexWorker

    made = []
    real = Registrar.from_weights.__func__

    def spy(cls, weights=None, **kwargs):
        made.append((weights, kwargs["settings"], kwargs["prepare"], kwargs["strict"]))
        return real(cls, weights, **kwargs)

    monkeypatch.setattr(Registrar, "from_weights", classmethod(spy))
    settings = BatchSettings(weights=(), method="optimize", extent=64, compilation_cache=False)
    pair = Pair(0, "m.nii.gz", "f.nii.gz")
    local = settings.registrar([pair])
    worker = IlexWorker(settings, [settings.combination(pair)])
    worker.setup(type("FakeWorker", (), {"address": "tcp://here"})())
    remote = worker.registrar()
    assert len(made) == 2 and made[0] == made[1]
    assert made[0][1] == settings.registration_settings() and made[0][3] is False
    for registrar in (local, remote):
        assert registrar.model is None and registrar.settings.extent == 64
        assert registrar.method_for("optimize").name == "optimize"


@pytest.mark.slow
def test_register_with_settings_is_register_with_keywords():
    data, affine = _head()
    moving, fixed = Image(data, affine, "moving"), Image(_head(seed=1)[0], affine, "fixed")
    settings = ilex.Settings(method="optimize", hyper=0.4, extent=32, options=FAST)
    by_settings = ilex.register(moving, fixed, settings=settings)
    by_keywords = ilex.register(moving, fixed, method="optimize", hyper=0.4, extent=32, **FAST)
    warm = Registrar(settings=settings).register(moving, fixed)
    np.testing.assert_array_equal(by_settings.forward, by_keywords.forward)
    np.testing.assert_array_equal(by_settings.forward, warm.forward)
    # A keyword overrides the settings it is given with (a smoother warp at a higher λ).
    smoother = ilex.register(moving, fixed, settings=settings, hyper=0.9)
    assert np.abs(smoother.forward - by_settings.forward).max() > 1e-3
    with pytest.raises(OptionError) as e:
        ilex.register(moving, fixed, settings=settings, extent=40)
    assert e.value.argument == "extent"
