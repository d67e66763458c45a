"""Where a benchmark's figures came from: the code, the command, the machine and its load.

Every harness in bench/ writes this block into its result, so that a figure can be traced to the
commit that made it and judged against what else ran on the machine:

    prov = provenance.collect()            # at the start, before any measurement
    ...                                    # measure
    report["provenance"] = provenance.finish(prov)   # JSON results: a "provenance" key
    markdown = provenance.markdown(prov) + table     # markdown results: a header block

`collect()` returns

* `commit`: `git rev-parse HEAD` of this repository (None outside a git checkout);
* `dirty`: whether `git status --porcelain` lists anything (uncommitted or untracked files), and
  `dirty_paths`, the first 50 of them: a dirty run measured code that no commit holds;
* `command`: the command line as typed (`python` and `sys.argv`, shell-quoted), `cwd` the folder
  it ran in, and `python_executable` the interpreter;
* `started`: UTC time (ISO 8601);
* `machine`: CPU model, `cores` (`os.cpu_count()`), `cores_usable` (this process's CPU affinity),
  `memory_gib` (physical), `os` (`platform.platform()`), `python`, and the installed versions of
  jax, jaxlib, numpy and ilex (read from package metadata, so nothing is imported);
* `nice`: this process's niceness; `load_average_start`: `os.getloadavg()` (1, 5, 15 min).

`finish()` adds `finished` and `load_average_end`; a harness that writes its result after every
measurement calls it before every write, so a run cut short still says when it stopped.

Only the standard library is used: the module is imported by `python bench/NAME.py` (bench/ is on
`sys.path` then) and by tests/test_bench_provenance.py.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("jax", "jaxlib", "numpy", "ilex")
_DIRTY_PATHS_SHOWN = 50


def _git(*args: str) -> str | None:
    """stdout of `git -C ROOT ARGS`, or None when git is missing or ROOT is not a checkout."""
    try:
        proc = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True, check=True, timeout=60)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return proc.stdout


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    """The machine and the software versions that a figure depends on."""
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory_gib = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": None if memory_gib is None else round(memory_gib, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        **{package: _version(package) for package in PACKAGES},
    }


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def collect(argv: list[str] | None = None) -> dict:
    """The provenance block at the start of a run (`argv` defaults to `sys.argv`)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain")
    dirty_paths = [line[3:] for line in status.splitlines() if line.strip()] if status is not None else None
    return {
        "commit": commit.strip() if commit else None,
        "dirty": None if dirty_paths is None else bool(dirty_paths),
        "dirty_paths": None if dirty_paths is None else dirty_paths[:_DIRTY_PATHS_SHOWN],
        "command": shlex.join(["python", *(sys.argv if argv is None else argv)]),
        "cwd": os.getcwd(),
        "python_executable": sys.executable,
        "started": _now(),
        "machine": machine(),
        "nice": os.nice(0),
        "load_average_start": list(os.getloadavg()),
    }


def finish(block: dict) -> dict:
    """`block` with the time and the load average now (called before each write); returns it."""
    block["finished"] = _now()
    block["load_average_end"] = list(os.getloadavg())
    return block


def markdown(block: dict) -> str:
    """The block as a markdown header (ends with a blank line), for results written as markdown."""
    m = block["machine"]
    if block["commit"] is None:
        code = "not a git checkout"
    elif block["dirty"]:
        code = f"`{block['commit']}` with uncommitted changes ({len(block['dirty_paths'])} paths)"
    else:
        code = f"`{block['commit']}`, clean"
    versions = ", ".join(f"{p} {m[p]}" for p in PACKAGES if m.get(p))
    loads = f"{_loads(block['load_average_start'])} at the start"
    if "load_average_end" in block:
        loads += f", {_loads(block['load_average_end'])} at the end"
    return "\n".join(
        [
            f"- commit: {code}",
            f"- command: `{block['command']}` (in `{block['cwd']}`), started {block['started']}"
            + (f", finished {block['finished']}" if "finished" in block else ""),
            (
                f"- machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), {m['memory_gib']} GiB, "
                f"{m['os']}; Python {m['python']}, {versions}"
            ),
            f"- load average (1, 5, 15 min): {loads}; nice {block['nice']}",
            "",
        ]
    )


def _loads(values: list[float]) -> str:
    return "(" + ", ".join(f"{x:.1f}" for x in values) + ")"
