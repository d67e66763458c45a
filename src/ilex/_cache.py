"""JAX's persistent compilation cache, on by default, so that a second process does not compile again.

A registration at extent 256 spends seconds compiling the U-Net before it runs; every fresh
`ilex register` process paid that again. With the cache on, XLA executables are written to
`$ILEX_COMPILATION_CACHE_DIR`, else `$XDG_CACHE_HOME/ilex/jax`, else `~/.cache/ilex/jax`, and the
next process with the same program, shapes, JAX version and machine loads them instead.

`ILEX_NO_COMPILATION_CACHE=1` (or `ilex batch --no-compilation-cache`) turns it off. The cache
is an optimisation only: entries are checked by JAX, and an unwritable directory gives a
warning, never an error. The registration's own programs are also kept, under a key that needs
no tracing, in its `ilex-programs` folder (`ilex._programs`), on and off with it.
"""

from __future__ import annotations

import os
import warnings

ENV_DISABLE = "ILEX_NO_COMPILATION_CACHE"
ENV_DIR = "ILEX_COMPILATION_CACHE_DIR"

# Every executable is kept, the small ones too: a `-m optimize` process compiles about 95 small
# jits (pyramid levels, resampling, composing, eager matrix arithmetic) in 0.01-0.4 s each; kept,
# its second run went from 7.3 to 3.6 s on a 2 mm pair (the cache stays near 1.5 MB a pair).
_MIN_COMPILE_SECONDS = 0.0


def cache_dir() -> str:
    """Where the compilation cache lives (see the module docstring); not created here."""
    explicit = os.environ.get(ENV_DIR)
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ilex", "jax")


def cache_disabled() -> bool:
    """Whether `ILEX_NO_COMPILATION_CACHE` asks for no persistent cache (any value but '', 0, false, no)."""
    return os.environ.get(ENV_DISABLE, "").strip().lower() not in ("", "0", "false", "no")


def enable_compilation_cache(path: str | os.PathLike | None = None, *, enable: bool | None = None) -> str | None:
    """Switch on JAX's persistent compilation cache in `path` (default `cache_dir()`).

    Returns the directory in use, or None when the cache stays off: `enable=False`, or
    `enable=None` with `ILEX_NO_COMPILATION_CACHE` set, or the directory cannot be created
    (a warning says why). Call it once at start-up, before the first computation; calling it
    again with the same directory does nothing.
    """
    if enable is None:
        enable = not cache_disabled()
    if not enable:
        return None
    import jax

    directory = os.path.abspath(os.fspath(path)) if path is not None else cache_dir()
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        warnings.warn(f"ilex: compilation cache disabled, cannot create {directory}: {e.strerror}", stacklevel=2)
        return None
    if not os.access(directory, os.W_OK):
        warnings.warn(f"ilex: compilation cache disabled, {directory} is not writable", stacklevel=2)
        return None
    if jax.config.jax_compilation_cache_dir == directory:
        return directory
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", _MIN_COMPILE_SECONDS)
    return directory
