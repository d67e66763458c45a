"""JAX's persistent compilation cache for ilex: compile each function shape once per machine.

On a CPU, XLA's compilation of the optimisation steps and the pipeline's resampling takes a
third to a half of a first `-m optimize` run (measured in bench/optimize_vs_ants.py); with the
cache, later runs load the compiled code instead (16.8 s -> 4.1 s for one deformable step's first
call at 64^3, most of the rest being imports).
"""

from __future__ import annotations

import os


def default_directory() -> str:
    """`$ILEX_CACHE_DIR`, else `$XDG_CACHE_HOME/ilex/jax`, else `~/.cache/ilex/jax`."""
    if os.environ.get("ILEX_CACHE_DIR"):
        return os.environ["ILEX_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ilex", "jax")


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> str:
    """Turn on JAX's persistent compilation cache in `directory` (created if needed) for every
    compilation from now on, however short; returns the directory. Call before the first jit."""
    import jax

    directory = os.fspath(directory or default_directory())
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return directory
