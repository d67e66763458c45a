"""`ilex._programs`: compiled programs kept on disk under ilex's own key, so that a new process
neither traces nor lowers them (issue 34's cached runs).

Oracles: the same function through plain `jax.jit` (the same bits), JAX's own monitoring events
(what a process traced, lowered and compiled), and the files in the cache folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ilex import _programs
from ilex._programs import FOLDER, program


@pytest.fixture
def cache_on(tmp_path, monkeypatch):
    """JAX's persistent cache (and so this one) in a fresh folder, for this test alone."""
    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path))
    yield tmp_path / FOLDER
    jax.config.update("jax_compilation_cache_dir", before)


@program(static_argnames=("power",))
def _scaled(x, y=None, *, power):
    return x**power + (0 if y is None else y)


@program(static_argnames=("power",))
def _shifted(x, power, y):
    return x**power - y


@program(static_argnums=0)
def _ramp(n):
    return jnp.arange(n, dtype=jnp.float32)


def _entries(folder) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_the_same_bits_as_jax_jit_and_one_entry_per_program(cache_on):
    x = jnp.linspace(0.1, 2.0, 1000, dtype=jnp.float32)
    plain = jax.jit(_scaled.__wrapped__, static_argnames=("power",))
    np.testing.assert_array_equal(_scaled(x, power=3), plain(x, power=3))
    np.testing.assert_array_equal(_scaled(x, x, power=3), plain(x, x, power=3))
    assert len(_entries(cache_on)) == 2  # another tree of arguments (y given) is another program
    _scaled(x + 1, power=3)  # same types: nothing new
    _scaled(x, power=2)  # another static argument
    _scaled(x[:10], power=2)  # another shape
    np.testing.assert_array_equal(_ramp(5), np.arange(5, dtype=np.float32))
    assert len(_entries(cache_on)) == 5
    # A named static argument given by position (and those after it) is the same program.
    shifted = jax.jit(_shifted.__wrapped__, static_argnames="power")
    np.testing.assert_array_equal(_shifted(x, 2, x), shifted(x, 2, x))
    np.testing.assert_array_equal(_shifted(x, power=2, y=x), shifted(x, 2, x))
    assert len(_entries(cache_on)) == 6  # _shifted's one program, however it was called


def test_inside_another_functions_tracing_it_is_staged_out_not_baked_in(cache_on):
    # Run at top level, a `program` with static arguments alone would hand the caller a concrete
    # array, which the caller's program would then carry as a constant.
    jaxpr = jax.make_jaxpr(lambda x: x + _ramp(1000))(jnp.zeros(1000))
    assert not any(np.size(c) > 1 for c in jaxpr.consts), jaxpr
    assert _entries(cache_on) == []
    fn = jax.jit(lambda x: _scaled(x, power=2))
    np.testing.assert_array_equal(fn(jnp.arange(4.0)), jnp.arange(4.0) ** 2)
    np.testing.assert_array_equal(jax.vmap(lambda x: _scaled(x, power=2))(jnp.ones((3, 2))), np.ones((3, 2)))
    np.testing.assert_allclose(jax.grad(lambda x: _scaled(x, power=2))(3.0), 6.0)
    assert _entries(cache_on) == []


def test_what_jax_jit_allows_a_program_allows(cache_on):
    import copy

    x = jnp.arange(4.0)
    with jax.disable_jit():
        np.testing.assert_array_equal(_scaled(x, power=2), x**2)
    with jax.debug_nans(True):
        np.testing.assert_array_equal(_scaled(x, power=2), x**2)
    np.testing.assert_array_equal(_ramp(n=4), np.arange(4.0))  # a static_argnums argument by name
    assert copy.copy(_scaled)(x, power=2).shape == (4,)
    with jax.enable_x64(True):
        assert _ramp(3).dtype == jax.jit(_ramp.__wrapped__, static_argnums=0)(3).dtype


def test_off_with_the_cache_off(cache_on):
    jax.config.update("jax_compilation_cache_dir", "")  # JAX's cache off: so is this one
    np.testing.assert_array_equal(_scaled(jnp.arange(3.0), power=2), [0.0, 1.0, 4.0])
    assert _entries(cache_on) == []


def test_a_broken_or_stale_entry_is_compiled_again(cache_on, monkeypatch):
    x = jnp.arange(6.0, dtype=jnp.float32)
    _scaled(x, power=4)
    (entry,) = _entries(cache_on)
    path = cache_on / entry
    for damage in (b"", path.read_bytes()[:-100], b"not a pickle at all"):
        path.write_bytes(damage)
        jax.clear_caches()  # as a new process
        np.testing.assert_array_equal(_scaled(x, power=4), np.arange(6.0) ** 4)
        assert len(path.read_bytes()) > 1000  # written whole again
    # Another ilex (its sources' hash) keys another entry.
    monkeypatch.setattr(_programs, "_source_digest", lambda: "another version")
    jax.clear_caches()
    _scaled(x, power=4)
    assert len(_entries(cache_on)) == 2


_CHILD = textwrap.dedent(
    """
    import collections, hashlib, json, sys
    import jax.monitoring
    events = collections.Counter()
    names = {"/jax/core/compile/jaxpr_trace_duration": "trace", "/jax/core/compile/backend_compile_duration": "compile"}
    def on(event, seconds, **kw):
        if event in names:
            events[names[event] + " " + str(kw.get("fun_name"))] += 1
    jax.monitoring.register_event_duration_secs_listener(on)
    import numpy as np
    from ilex._cache import enable_compilation_cache
    enable_compilation_cache(sys.argv[1], enable=sys.argv[1] != "off")
    if len(sys.argv) > 4:  # SynthMorph's deformable model from these weights
        from ilex.registration.session import Registrar
        r = Registrar.from_weights(sys.argv[4], extent=32).register(sys.argv[2], sys.argv[3])
    else:
        from ilex.registration.methods import OptimizeMethod
        from ilex.registration.pipeline import register
        r = register(sys.argv[2], sys.argv[3], method=OptimizeMethod(levels=(2, 1), iterations=(10, 5)))
    digest = hashlib.sha256(np.asarray(r.forward, np.float32).tobytes()).hexdigest()
    print(json.dumps({"events": events, "forward": digest}))
    """
)


def _register_in_a_new_process(cache, moving, fixed, *weights) -> dict:
    env = dict(os.environ)
    env.pop("ILEX_NO_COMPILATION_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(cache), str(moving), str(fixed), *map(str, weights)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _heads(folder):
    import nibabel as nib

    grid = np.stack(np.meshgrid(*[np.arange(40.0)] * 3, indexing="ij"), -1)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    paths = []
    for k, centre in enumerate(((20, 20, 20), (21.5, 19, 20.5))):
        radius = np.linalg.norm((grid - centre) * [1.0, 1.2, 0.9], axis=-1)
        data = np.exp(-((radius / 12.0) ** 4)) + 0.3 * np.exp(-(((grid[..., 0] - 20) / 4.0) ** 2)) * (radius < 10)
        paths.append(folder / f"head{k}.nii.gz")
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), paths[-1])
    return paths


_SERVED = textwrap.dedent(
    """
    import sys
    import jax.numpy as jnp
    from ilex._cache import enable_compilation_cache
    enable_compilation_cache(sys.argv[1], enable=True)
    print(float(jnp.ones(3).sum()))  # JAX's cache in use before the first program
    from ilex.transforms.grid import voxel_grid
    print(float(voxel_grid((5, 6, 7)).sum()))
    """
)


def test_what_jaxs_cache_serves_is_never_kept(tmp_path):
    """JAX's cache holds a program and this one does not (its folder removed): that process must
    not keep what JAX served (written again, it failed when loaded: jaxlib 0.10.2), and the
    processes after it run."""
    import shutil

    run = [sys.executable, "-c", _SERVED, str(tmp_path)]
    outputs = [subprocess.run(run, capture_output=True, text=True, check=True).stdout]
    shutil.rmtree(tmp_path / FOLDER)
    for _ in range(2):
        done = subprocess.run(run, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1] == outputs[2] == "3.0\n1575.0\n"


@pytest.mark.slow
def test_a_new_process_traces_nothing_and_gets_the_same_bits(tmp_path):
    """Processes on one small pair: without any cache (the reference bits); filling both caches;
    with both, where none of the registration's programs is traced or compiled; then, this cache's
    folder removed, with JAX's alone twice (nothing JAX serves is kept: the same bits, no failure)."""
    import shutil

    moving, fixed = _heads(tmp_path)
    reference = _register_in_a_new_process("off", moving, fixed)
    cache = tmp_path / "cache"
    first = _register_in_a_new_process(cache, moving, fixed)
    assert first["forward"] == reference["forward"]
    assert any(k.startswith("compile jit(_moved__ilex_") for k in first["events"]), first["events"]
    cached = _register_in_a_new_process(cache, moving, fixed)
    assert cached["forward"] == reference["forward"]
    ours = ("_moved", "_force_of", "_velocity_update", "_update", "_affine_sample", "_affine_similarity")
    ours += ("_affine_update", "_integrate_velocity", "_full_resolution", "_resample_normalised")
    traced = {k: n for k, n in cached["events"].items() if k.split(" ")[1].strip("jit()") in ours}
    assert traced == {}, cached["events"]
    # What is still traced: the eager operations between programs (9 in this run, each a few ms).
    assert sum(n for k, n in cached["events"].items() if k.startswith("trace")) <= 9, cached["events"]
    shutil.rmtree(cache / FOLDER)
    for _ in range(2):
        assert _register_in_a_new_process(cache, moving, fixed)["forward"] == reference["forward"]


@pytest.mark.slow
def test_synthmorphs_deformable_network_is_kept_too(tmp_path):
    """The U-Net's program (the random-weight reduced-width fixture: no registration, only the
    same bits) is neither traced nor compiled by a second process."""
    from conftest import fixture_path

    weights = fixture_path("net_e32_uniform.h5")
    moving, fixed = _heads(tmp_path)
    reference = _register_in_a_new_process("off", moving, fixed, weights)
    first = _register_in_a_new_process(tmp_path / "cache", moving, fixed, weights)
    cached = _register_in_a_new_process(tmp_path / "cache", moving, fixed, weights)
    assert first["forward"] == cached["forward"] == reference["forward"]
    assert any(k.startswith("compile jit(_deform_velocity__ilex_") for k in first["events"]), first["events"]
    kept = ("_deform_velocity", "_integrate_velocity")
    assert not any(name in k for name in kept for k in cached["events"]), cached["events"]
