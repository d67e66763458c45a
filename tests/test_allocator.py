"""`ilex._allocator.keep_freed_memory`: the `ilex` command keeps freed memory for its next arrays
(glibc). Each case runs in a child process: the allocator's settings are per process and for good."""

import json
import os
import subprocess
import sys

import pytest

CHILD = """
import ctypes, json, numpy as np
from ilex._allocator import keep_freed_memory

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(n, ctypes.c_size_t) for n in names.split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
kept = keep_freed_memory()
before = libc.mallinfo2()
block = np.ones(2**26 // 8)  # 64 MiB, above glibc's largest mapping threshold
during = libc.mallinfo2()
del block
after = libc.mallinfo2()
print(json.dumps({"kept": kept, "mapped": during.hblks - before.hblks, "from_heap": during.uordblks - before.uordblks,
                  "heap_kept": after.arena >= during.arena}))
"""


def _child(**env) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "ILEX_KEEP_FREED_MEMORY"}
    command = [sys.executable, "-c", CHILD]
    out = subprocess.run(command, env={**environ, **env}, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt; CI runs Linux")
def test_freed_memory_is_kept_in_the_heap():
    kept = _child()
    assert kept["kept"] is True
    assert kept["mapped"] == 0  # served from the heap, not a mapping of its own
    assert kept["from_heap"] >= 2**26
    assert kept["heap_kept"]  # the heap is not trimmed once it is freed: there for the next array
    default = _child(ILEX_KEEP_FREED_MEMORY="0")  # what glibc does by default: so the test above can fail
    assert default["kept"] is False
    assert default["mapped"] == 1
    assert default["from_heap"] < 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt; CI runs Linux")
def test_the_users_own_allocator_settings_are_left_alone():
    assert _child(MALLOC_ARENA_MAX="4")["kept"] is False
    assert _child(MALLOC_MMAP_MAX_="65536")["kept"] is False


def test_the_ilex_command_keeps_freed_memory(monkeypatch):
    from ilex.cli import main as cli

    called = []
    monkeypatch.setattr("ilex._allocator.keep_freed_memory", lambda: called.append(True) or True)
    with pytest.raises(SystemExit):
        cli.main(["apply", "--help"])  # help exits in parsing: before any work, so nothing is set
    assert called == []
    assert cli.main(["report", "/nonexistent/qc"]) != 0
    assert called == [True]
