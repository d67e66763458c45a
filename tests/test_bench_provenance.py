"""bench/provenance.py: the block every benchmark result carries says which code ran, how, where and under what load."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import provenance  # bench/ is not a package

needs_git = pytest.mark.skipif(
    shutil.which("git") is None or not os.path.exists(os.path.join(ROOT, ".git")), reason="needs a git checkout"
)


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True, check=True).stdout


def test_fields():
    block = provenance.finish(provenance.collect(["bench/some.py", "--json", "out file.json"]))
    for key in (
        "commit",
        "dirty",
        "dirty_paths",
        "command",
        "cwd",
        "started",
        "finished",
        "machine",
        "load_average_start",
        "load_average_end",
    ):
        assert key in block, key
    assert block["command"] == "python bench/some.py --json 'out file.json'"  # shell-quoted, as typed
    for key in ("cpu", "cores", "cores_usable", "memory_gib", "os", "python", "jax", "numpy"):
        assert block["machine"][key], key
    assert len(block["load_average_start"]) == len(block["load_average_end"]) == 3
    assert block["started"] <= block["finished"]


@needs_git
def test_commit_is_head():
    assert provenance.collect()["commit"] == _git("rev-parse", "HEAD").strip()


@needs_git
def test_dirty_is_git_status():
    # Others may edit the checkout between the two reads: read again once before calling it a mismatch.
    for _ in range(2):
        block = provenance.collect()
        status = _git("status", "--porcelain")
        if block["dirty"] == bool(status.strip()):
            break
    assert block["dirty"] == bool(status.strip())
    assert block["dirty"] == bool(block["dirty_paths"])


def test_markdown_header():
    block = provenance.finish(provenance.collect(["bench/some.py"]))
    block.update(commit="0123abc", dirty=True, dirty_paths=["src/x.py"])
    text = provenance.markdown(block)
    assert "`0123abc` with uncommitted changes (1 paths)" in text
    assert "`python bench/some.py`" in text
    assert "at the start" in text and "at the end" in text
    block.update(dirty=False, dirty_paths=[])
    assert "`0123abc`, clean" in provenance.markdown(block)


def test_every_harness_writes_the_block():
    """Each bench script that runs on its own (`__main__`) collects the block and finishes it
    before writing: a new harness without it, or one that drops it, fails here. (A check of the
    source, as running a harness takes minutes to hours.)"""
    import ast

    bench = os.path.join(ROOT, "bench")
    harnesses = []
    for name in sorted(os.listdir(bench)):
        if not name.endswith(".py") or name == "provenance.py":
            continue
        with open(os.path.join(bench, name), encoding="utf-8") as f:
            source = f.read()
        if "__main__" not in source:
            continue  # a module the harnesses import (cases.py, peers.py)
        harnesses.append(name)
        calls = {
            node.func.attr
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "provenance"
        }
        assert {"collect", "finish"} <= calls, f"bench/{name} calls provenance.{sorted(calls)} only"
    assert len(harnesses) >= 7, harnesses
