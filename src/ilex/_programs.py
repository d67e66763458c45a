"""Compiled programs kept on disk under a key of their own, so that a new process neither traces nor lowers them.

JAX's persistent compilation cache (`_cache.py`) spares a second process XLA's compilation, but
JAX finds an entry by the hash of the lowered program: every process still traces and lowers each
jitted function to look it up. For `-m optimize` on a small image that is about a second of a
four-second cached run (0.5 s tracing, 0.4 s lowering over some 35 programs, measured).

`program` is `jax.jit` for the registration's top-level functions, with a second cache in front of
it: the executable, serialised, under a key made of the function's name, its static arguments,
its arguments' tree and types, and what could change the program without changing those: a hash
of ilex's own source files, the versions of the libraries traced into it (JAX, jaxlib, optax,
equinox, NumPy, SciPy), the backend, device and CPU features, `XLA_FLAGS` and the JAX settings
that change arithmetic or types. Only functions whose program depends on
nothing else (no closures over values, no global state but constants in ilex's source) may use
it. It is on exactly when JAX's persistent cache is (`ilex._cache.enable_compilation_cache`),
in a folder of its own there (`ilex-programs`); inside another function's tracing (a `program`
called from a jitted function: it must be staged out, not run, or its result would be baked into
the caller as a constant), under `jax.disable_jit` or JAX's NaN/Inf checks, with more than one
device, or with the cache off, a `program` is its `jax.jit`.

Entries are compiled by this cache under a name of the key's own, never taken from JAX's cache:
an executable JAX read from its cache and serialised again failed when loaded (jaxlib 0.10.2 on
CPU, reproduced; `tests/test_programs.py`). An entry that cannot be read, loaded or written is
compiled again; it is never an error.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
import pickle
import platform
import sys
import tempfile
import threading
from importlib import metadata

import jax

try:  # private (JAX 0.10 has no public form): whether no transformation is tracing, and
    # jax.clear_caches() reaching ours
    from jax._src.core import trace_state_clean as _at_top_level
    from jax._src.util import register_cache as _register_cache
except ImportError:  # then every `program` is its jax.jit
    _at_top_level = _register_cache = None

FOLDER = "ilex-programs"
_FORMAT = b"ilex-programs 2"


@functools.cache
def _source_digest() -> str:
    """SHA-256 of ilex's Python sources (names and bytes): any edit makes new keys."""
    root = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as f:
                    digest.update(f.read() + b"\0")
    return digest.hexdigest()


@functools.cache
def _cpu_features() -> str:
    # An executable compiled for one CPU's instructions must not run on another (a shared home on
    # a cluster of mixed nodes): the kernel's flag list where there is one, else the platform's name.
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return hashlib.sha256(line.encode()).hexdigest()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


@functools.cache
def _versions() -> tuple:
    # The libraries whose code is traced into the programs (optax's optimisers, equinox's modules)
    # or computes their constants: an upgrade may change the arithmetic with ilex's sources unchanged.
    out = []
    for name in ("jax", "jaxlib", "optax", "equinox", "numpy", "scipy"):
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, None))
    return tuple(out)


def _settings() -> tuple:
    """The JAX settings that change a program's arithmetic or types (part of every key)."""
    config = jax.config
    return (
        config.jax_enable_x64,
        str(config.jax_default_matmul_precision),
        str(config.jax_numpy_dtype_promotion),
        str(config.jax_numpy_rank_promotion),
    )


def _environment() -> tuple:
    device = jax.devices()[0]
    return (
        _source_digest(),
        _versions(),
        sys.version_info[:2],
        device.platform,
        device.device_kind,
        _cpu_features(),
        os.environ.get("XLA_FLAGS", ""),
    )


def _folder() -> str | None:
    """The entries' folder while JAX's persistent cache is on with one device, else None."""
    directory = jax.config.jax_compilation_cache_dir
    if not directory or jax.device_count() != 1:
        return None
    return os.path.join(directory, FOLDER)


# Whether the compilation on this thread was served by JAX's own cache (its monitoring event):
# such an executable, serialised again, failed when loaded ("Function iota_concatenate_fusion not
# found", jaxlib 0.10.2 on CPU, reproduced), so it is not kept here.
_compiling = threading.local()


def _on_event(event: str, **kwargs) -> None:
    if event == "/jax/compilation_cache/cache_hits" and getattr(_compiling, "active", False):
        _compiling.hit = True


@functools.cache
def _listen() -> None:
    jax.monitoring.register_event_listener(_on_event)  # once (twice in a race: harmless)


class _Loaded:
    """A program's executables in this process, emptied by `jax.clear_caches()` as jax.jit's are."""

    def __init__(self, name: str):
        self.executables: dict = {}
        if _register_cache is not None:
            _register_cache(self, name)

    def cache_clear(self) -> None:
        self.executables.clear()

    def cache_info(self) -> str:
        return f"{len(self.executables)} programs"

    def cache_keys(self):
        return list(self.executables)


class Program:
    """A jitted function whose compiled programs outlive the process (see the module docstring)."""

    def __init__(self, fun, static_argnames=None, static_argnums=None, donate_argnames=None):
        functools.update_wrapper(self, fun)
        # None, not (): jax.jit infers the numbers of named static arguments only when not given.
        self._jit_options = {
            "static_argnames": static_argnames,
            "static_argnums": static_argnums,
            "donate_argnames": donate_argnames,
        }
        self.jitted = jax.jit(fun, **self._jit_options)
        self.name = f"{fun.__module__}.{fun.__qualname__}"
        self._static_names = tuple(static_argnames or ())
        nums = () if static_argnums is None else static_argnums
        self._static_nums = tuple(sorted(nums if isinstance(nums, tuple) else (nums,)))
        # A named static argument given by position: it and the arguments after it are passed by
        # name instead (one form for the key and the program); where that is not possible, jax.jit.
        parameters = list(inspect.signature(fun).parameters.values())
        positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = [p.name for p in positional]
        self._first_named_static = min((names.index(n) for n in self._static_names if n in names), default=None)
        self._by_name = [p.name if p.kind == p.POSITIONAL_OR_KEYWORD else None for p in positional]
        self._static_num_names = {names[i] for i in self._static_nums if i < len(names)}
        self._loaded = _Loaded(self.name)

    def __getattr__(self, name):  # the rest of jax.jit's interface (lower, trace, eval_shape, ...)
        try:
            jitted = self.__dict__["jitted"]
        except KeyError:  # copy, pickle: before __init__ ran
            raise AttributeError(name) from None
        return getattr(jitted, name)

    def _cache_size(self) -> int:
        """Programs held in this process: jax.jit's and those this cache loaded or compiled."""
        return self.jitted._cache_size() + len(self._loaded.executables)

    def __call__(self, *args, **kwargs):
        folder = _folder()
        config = jax.config
        if (
            folder is None
            or _at_top_level is None
            or not _at_top_level()  # inside another function's tracing: staged out there, as jax.jit does
            or config.jax_disable_jit
            or config.jax_debug_nans  # jax.jit's checks and their de-optimised rerun
            or config.jax_debug_infs
            or any(n in kwargs for n in self._static_num_names)
        ):
            return self.jitted(*args, **kwargs)
        first = self._first_named_static
        if first is not None and len(args) > first:
            names = self._by_name[first : len(args)]
            if len(args) > len(self._by_name) or None in names or any(n in kwargs for n in names):
                return self.jitted(*args, **kwargs)
            args, kwargs = args[:first], {**dict(zip(names, args[first:], strict=True)), **kwargs}
        statics = tuple((name, kwargs.pop(name)) for name in self._static_names if name in kwargs)
        if self._static_nums:
            statics += tuple((i, args[i]) for i in self._static_nums if i < len(args))
            dynamic = tuple(a for i, a in enumerate(args) if i not in self._static_nums)
        else:
            dynamic = args
        leaves, tree = jax.tree.flatten((dynamic, kwargs))  # no tracers: `_at_top_level` above
        types = tuple(leaf.aval if isinstance(leaf, jax.Array) else jax.typeof(leaf) for leaf in leaves)
        key = (statics, tree, types, _settings())
        compiled = self._loaded.executables.get(key)
        if compiled is None:
            compiled = self._loaded.executables[key] = self._load_or_compile(folder, key, args, kwargs, statics)
        return compiled(*dynamic, **kwargs)

    def _load_or_compile(self, folder, key, args, kwargs, statics):
        from jax.experimental import serialize_executable

        statics_, tree, types, settings = key
        text = repr((self.name, statics_, str(tree), tuple(str(t) for t in types), settings, _environment()))
        digest = hashlib.sha256(text.encode()).hexdigest()
        path = os.path.join(folder, digest + ".bin")
        try:
            with open(path, "rb") as f:
                magic, checksum, payload, out_tree = pickle.load(f)
            if magic == _FORMAT and hashlib.sha256(payload).digest() == checksum:
                # The arguments' tree is this call's own (it is in the key): an equinox module's
                # tree does not come back whole from pickle ('_Missing' object, equinox 0.13).
                return serialize_executable.deserialize_and_load(payload, tree, out_tree)
        except Exception:  # noqa: BLE001, S110 — a missing, partial or stale entry is compiled again
            pass
        named = {n: v for n, v in statics if isinstance(n, str)}
        # Compiled under a name of this key's own (JAX's cache key includes the program's name), so
        # that JAX's cache cannot serve it (see `_compiling`) unless this entry was lost.
        _listen()
        _compiling.active, _compiling.hit = True, False
        try:
            fun = self.__wrapped__
            named_jit = jax.jit(_renamed(fun, f"{fun.__name__}__ilex_{digest[:12]}"), **self._jit_options)
            compiled = named_jit.lower(*args, **kwargs, **named).compile()
        finally:
            _compiling.active = False
        if _compiling.hit:  # served by JAX's cache: not kept (see `_compiling`)
            return compiled
        try:
            payload, in_tree, out_tree = serialize_executable.serialize(compiled)
            if in_tree != tree or pickle.loads(pickle.dumps(out_tree)) != out_tree:
                return compiled  # a tree that would not come back the same: not kept
            os.makedirs(folder, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=folder, suffix=".tmp")
        except Exception:  # noqa: BLE001 — the cache is an optimisation: unwritable, it is not kept
            return compiled
        try:
            with os.fdopen(handle, "wb") as f:
                pickle.dump((_FORMAT, hashlib.sha256(payload).digest(), payload, out_tree), f)
            # Whole or not at all, and at once: not `_atomic.atomic_file`, whose renames wait for an
            # output batch (a program may compile while one is open) and are undone with it.
            os.replace(temporary, path)
        except Exception:  # noqa: BLE001 — as above
            with contextlib.suppress(OSError):
                os.remove(temporary)
        return compiled


def _renamed(fun, name: str):
    # `fun` under another name (its signature kept: jax.jit reads the static arguments' positions from it).
    @functools.wraps(fun)
    def renamed(*args, **kwargs):
        return fun(*args, **kwargs)

    renamed.__name__ = renamed.__qualname__ = name
    return renamed


def program(fun=None, *, static_argnames=None, static_argnums=None, donate_argnames=None):
    """`jax.jit` whose compiled programs are kept on disk (see the module docstring); as a
    decorator, bare or with `jax.jit`'s static and donated arguments."""
    if fun is None:
        return functools.partial(
            program, static_argnames=static_argnames, static_argnums=static_argnums, donate_argnames=donate_argnames
        )
    return Program(fun, static_argnames, static_argnums, donate_argnames)
