"""`ilex._allocator`: the `ilex` command keeps freed memory for its next arrays (glibc), and says how much
it holds free. Each case runs in a child process: the allocator's settings are per process and for good."""

import json
import os
import platform
import subprocess
import sys

import pytest

CHILD = """
import json, threading, numpy as np
from ilex._allocator import free_heap_bytes, keep_freed_memory, _libc

libc = _libc()  # with mallinfo2 declared
kept = keep_freed_memory()
out = {"kept": kept}
for where in ("main", "thread"):  # a thread's large blocks too (one arena)
    def run():
        before = libc.mallinfo2()
        block = np.ones(2**26 // 8)  # 64 MiB, above glibc's largest mapping threshold
        during = libc.mallinfo2()
        free_during = free_heap_bytes()
        del block
        after = libc.mallinfo2()
        out[where] = {"mapped": during.hblks - before.hblks, "from_heap": during.uordblks - before.uordblks,
                      "heap_kept": after.arena >= during.arena, "freed": free_heap_bytes() - free_during}
    thread = threading.Thread(target=run) if where == "thread" else None
    if thread is None:
        run()
    else:
        thread.start()
        thread.join()
print(json.dumps(out))
"""

GLIBC = platform.libc_ver()[0] == "glibc" and tuple(int(x) for x in platform.libc_ver()[1].split(".")[:2]) >= (2, 33)
needs_glibc = pytest.mark.skipif(not GLIBC, reason="glibc >= 2.33's mallopt and mallinfo2; CI runs Debian's 2.36")


def _child(**env) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "ILEX_KEEP_FREED_MEMORY"}
    environ.pop("GLIBC_TUNABLES", None)
    command = [sys.executable, "-c", CHILD]
    out = subprocess.run(command, env={**environ, **env}, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@needs_glibc
def test_freed_memory_is_kept_in_the_heap_and_counted_free():
    kept = _child()
    assert kept["kept"] is True
    for where in ("main", "thread"):
        assert kept[where]["mapped"] == 0, where  # served from the heap, not a mapping of its own
        assert kept[where]["from_heap"] >= 2**26, where
        assert kept[where]["heap_kept"], where  # the heap is not trimmed once it is freed: there for the next array
        assert kept[where]["freed"] >= 2**26, where  # and free_heap_bytes counts it
    default = _child(ILEX_KEEP_FREED_MEMORY="0")  # what glibc does by default: so the test above can fail
    assert default["kept"] is False
    for where in ("main", "thread"):
        assert default[where]["mapped"] == 1, where
        assert default[where]["from_heap"] < 2**20, where
        assert default[where]["freed"] < 2**20, where  # unmapped: given back, not kept


@needs_glibc
def test_the_users_own_allocator_settings_are_left_alone():
    assert _child(MALLOC_ARENA_MAX="4")["kept"] is False
    assert _child(MALLOC_MMAP_MAX_="65536")["kept"] is False
    assert _child(GLIBC_TUNABLES="glibc.malloc.trim_threshold=65536")["kept"] is False


def test_the_commands_that_loop_keep_freed_memory_and_register_does_not(monkeypatch, tmp_path):
    from ilex.cli import main as cli

    called = []
    monkeypatch.setattr("ilex._allocator.keep_freed_memory", lambda: called.append(True) or True)
    assert cli.main(["report", "/nonexistent/qc"]) != 0
    assert cli.main(["register", "/nonexistent/a.nii.gz", "/nonexistent/b.nii.gz", "-o", str(tmp_path / "m.nii.gz")])
    assert called == []  # one registration: glibc's default
    assert cli.main(["template", "/nonexistent/a.nii.gz", "/nonexistent/b.nii.gz", "-o", str(tmp_path / "t")]) != 0
    assert called == [True]


def test_memory_checks_count_the_kept_memory_as_available(monkeypatch):
    # What the process holds free is memory its next round or pair may use (`registration.memory`).
    from ilex.registration import memory

    monkeypatch.setattr("ilex._allocator.free_heap_bytes", lambda: 0)
    base = memory.available_bytes()
    monkeypatch.setattr("ilex._allocator.free_heap_bytes", lambda: 2**40)
    assert memory.available_bytes() - base == pytest.approx(2**40, rel=1e-3)  # free RAM moves a little meanwhile
