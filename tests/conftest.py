import os
import pathlib

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture
def getkey():
    keys = iter(jax.random.split(jax.random.key(0), 1000))
    return lambda: next(keys)


@pytest.fixture(autouse=True)
def _no_hub_network(monkeypatch, tmp_path_factory):
    """Tests never reach the network: the hub cache is a private directory and offline is forced."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
    monkeypatch.delenv("FREESURFER_HOME", raising=False)


@pytest.fixture(autouse=True)
def _allocator_left_alone(monkeypatch):
    """Tests that call `ilex.cli.main.main` in this process leave pytest's allocator as it is
    (`ilex._allocator`, whose own tests run it in child processes)."""
    monkeypatch.setenv("ILEX_KEEP_FREED_MEMORY", "0")


@pytest.fixture(autouse=True)
def _no_user_compilation_cache(monkeypatch):
    """Tests, and the processes they start, never write to the user's compilation cache (~/.cache/ilex)."""
    monkeypatch.setenv("ILEX_NO_COMPILATION_CACHE", "1")


def fixture_path(name: str) -> str:
    return os.fspath(FIXTURES / name)


@pytest.fixture
def without_annotation_checks():
    """Turn off the run-time annotation checks (pyproject's jaxtyping-packages) inside a test that
    checks the library's own refusal of bad shapes, which the annotation check would pre-empt."""
    import jaxtyping

    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)
