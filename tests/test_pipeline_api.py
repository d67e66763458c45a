"""The Python API of `register`: results computed once, and no recompilation on repeated calls."""

import logging

import jax
import numpy as np
import pytest
from conftest import fixture_path
from data import data_path

import ilex
from ilex.registration.pipeline import register

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def result():
    return register(
        data_path("colin27_t1.nii.gz"),
        data_path("mni2009a_t1.nii.gz"),
        ilex.load(fixture_path("net_e32_uniform.h5")),
        extent=32,
        steps=5,
    )


def test_moved_images_do_not_recompile(result, caplog):
    first = result.moved()
    result.fixed_moved()
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        caplog.clear()
        again = result.moved()
        result.fixed_moved()
        result.moved("nearest")
        result.moved("nearest")
    compiles = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling jit(resample)")]
    # One compilation for the new interpolation method, none for the repeated calls (each call
    # compiled afresh before the resampler became one module-level jit).
    assert len(compiles) == 1, compiles
    assert np.array_equal(first.get_fdata(), again.get_fdata())


def test_fields_are_computed_once(result, caplog):
    # The first access composes (and compiles); a second one must neither trace nor compute again.
    _ = (result.forward, result.inverse_vox)
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        caplog.clear()
        again = (result.forward, result.inverse_vox)
    assert not [r for r in caplog.records if "Compiling" in r.getMessage() or "Finished tracing" in r.getMessage()]
    assert again[0] is result.forward and again[1] is result.inverse_vox  # the stored arrays, not recomputed copies
    assert "forward" not in result.network_fields and "inverse" not in result.network_fields  # network fields released
