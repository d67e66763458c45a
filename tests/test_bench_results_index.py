"""bench/results/README.md lists every result file, and every file it names exists, so the index cannot drift."""

from __future__ import annotations

import os
import re

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "results")
INDEX = os.path.join(RESULTS, "README.md")


def _index() -> str:
    with open(INDEX, encoding="utf-8") as f:
        return f.read()


def _table_files(text: str) -> list[str]:
    """The first cell of every table row whose first cell is one `name`: the files the index lists."""
    return re.findall(r"^\| `([^`/\s]+)` \|", text, flags=re.MULTILINE)


def _named_files(text: str) -> set[str]:
    """Every result-file name the index mentions, in tables, prose and commands (bench/results/NAME or `NAME`)."""
    names = set(re.findall(r"bench/results/([\w.-]+\.(?:json|md|txt))\b", text))
    names |= set(re.findall(r"`([\w.-]+\.(?:json|md|txt))`", text))
    return names - {"README.md"}


def test_every_result_is_listed():
    listed = set(_table_files(_index()))
    on_disk = {name for name in os.listdir(RESULTS) if name != "README.md"}
    assert not on_disk - listed, f"add these to bench/results/README.md: {sorted(on_disk - listed)}"


def test_every_listed_file_exists():
    text = _index()
    missing = sorted(name for name in _named_files(text) if not os.path.isfile(os.path.join(RESULTS, name)))
    assert not missing, f"bench/results/README.md names files that do not exist: {missing}"


def test_each_file_listed_once():
    listed = _table_files(_index())
    assert len(listed) == len(set(listed)), sorted({name for name in listed if listed.count(name) > 1})
