import atexit
import os
import pathlib
import shutil
import tempfile

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

# Whatever a test or a process it starts switches on (a Dask worker, a CLI run in this process), the
# compilation caches land in a folder of this session's, never in the user's ~/.cache/ilex.
os.environ["ILEX_NO_COMPILATION_CACHE"] = "1"
os.environ["ILEX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE = tempfile.mkdtemp(prefix="ilex-tests-cache-")
atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)

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
    """Tests, and the processes they start, never write to the user's compilation cache (~/.cache/ilex);
    a test whose code switches JAX's persistent cache on in this process has it switched off after it
    (else every later test would write there, `ilex._programs` too)."""
    import jax

    monkeypatch.setenv("ILEX_NO_COMPILATION_CACHE", "1")
    before = jax.config.jax_compilation_cache_dir
    yield
    if jax.config.jax_compilation_cache_dir != before:
        jax.config.update("jax_compilation_cache_dir", before)


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
