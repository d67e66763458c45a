"""Keep the memory a process frees for its next arrays instead of handing it back to the system.

glibc's malloc gives every large block (from 128 KiB to 32 MiB up, as it adapts) a mapping of its
own and unmaps it when the block is freed, so the next array of that size is built from pages the
kernel hands over again, zeroed, on first touch. On a virtual machine whose host backs the guest's
memory lazily (Firecracker; a cloud VM with free-page reporting) that first touch is slow: on the
bench machine a new 170 MB array took 2.03 s to fill against 0.03 s in memory the process had freed
and kept (medians; docs/template.md, "Memory the process keeps"). A template, a batch or a training
run allocates arrays of the same few sizes over and over, so those `ilex` commands ask glibc to serve
every block from the process's heap (`M_MMAP_MAX` 0), never to trim it (`M_TRIM_THRESHOLD` -1), and
to use one arena for all threads (`M_ARENA_MAX` 1). The process then keeps its peak until it exits,
which its next pair, round or step needs again anyway.

Only the `ilex` commands that run many registrations, rounds or steps in one process do this
(`cli.main.KEEPS_FREED_MEMORY`: a single registration gains nothing and would hold more at its peak;
a library must not change its host's allocator). It is left alone
where the user set glibc's own variables (`MALLOC_MMAP_MAX_`, `MALLOC_TRIM_THRESHOLD_`,
`MALLOC_ARENA_MAX`, or `glibc.malloc` tunables in `GLIBC_TUNABLES`) or `ILEX_KEEP_FREED_MEMORY=0`,
and off glibc. Memory kept this way is free for the process's next arrays: `free_heap_bytes` says
how much, for the memory checks and the peak-memory figures (resident memory less it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")


class _MallInfo2(ctypes.Structure):  # glibc >= 2.33's struct mallinfo2 (malloc.h), every field a size_t
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()  # noqa: SIM905
    ]


@functools.cache
def _libc():
    """The C library with `mallopt` and `mallinfo2` declared where it has them; None where it cannot be loaded."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:  # Windows, or no C library by that name
        return None
    if hasattr(libc, "mallopt"):
        libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if hasattr(libc, "mallinfo2"):
        libc.mallinfo2.argtypes, libc.mallinfo2.restype = (), _MallInfo2
    return libc


def free_heap_bytes() -> int:
    """Bytes this process's malloc holds free for its next blocks (glibc's `mallinfo2`: `fordblks`),
    0 where that is unknown (not glibc, or glibc before 2.33)."""
    mallinfo2 = getattr(_libc(), "mallinfo2", None)
    return 0 if mallinfo2 is None else int(mallinfo2().fordblks)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory in the process (see the module docstring); returns
    whether it did (False off glibc, or where the user's environment decides)."""
    if os.environ.get("ILEX_KEEP_FREED_MEMORY", "1") == "0" or any(v in os.environ for v in USER_SETTINGS):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:  # not glibc (macOS, Windows)
        return False
    # mallopt returns 1 on success; a trim threshold of -1 turns trimming off (mallopt(3)).
    # One arena: a thread's arena is a 64 MiB mapping that cannot hold an image, so a thread's large
    # blocks would be mapped and unmapped whatever M_MMAP_MAX says (the outputs' and sums' threads).
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1), (M_ARENA_MAX, 1))
    done = [mallopt(parameter, value) == 1 for parameter, value in settings]  # each, even after a refusal
    return all(done)
