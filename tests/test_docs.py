"""The docs against the files and the code they describe: links, cited results, tables that repeat the code.

MkDocs (`mkdocs build --strict`, in CI) checks the links between pages and that every page is in the nav; what it
cannot see is checked here without building the site: links and citations of files outside docs/, the batch
column table against `ilex.batch.pairs`, the option tables against the command line's parsers, and the layout
table against the source tree.
"""

import argparse
import glob
import itertools
import os
import re

import pytest

from ilex.batch.pairs import ALIASES, COLUMNS
from ilex.cli.main import build_parser

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), os.pardir))
DOCS = os.path.join(ROOT, "docs")
PAGES = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(DOCS, "*.md")))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # as docs_hooks.LINK: [text](target), ![alt](target)


def _read(page: str) -> str:
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return f.read()


def _prose(text: str) -> str:
    """`text` without its fenced code blocks (commands and code, not links or citations)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def _table(text: str, heading: str) -> list[list[str]]:
    """The cells of the first Markdown table after the line starting with `heading`, header row first."""
    lines = text[text.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in itertools.takewhile(lambda line: line.startswith("|"), lines[start:]):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not all(set(c) <= set("-: ") for c in cells):  # the |---|---| line
            rows.append(cells)
    return rows


def _code(cell: str) -> list[str]:
    """The inline-code spans of a table cell."""
    return re.findall(r"`([^`]+)`", cell)


# --- links and citations -------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    """Every relative link of the README and docs/*.md names a file that exists (anchors are MkDocs' to check)."""
    base = os.path.dirname(os.path.join(ROOT, page))
    broken = []
    for target in LINK.findall(re.sub(r"`[^`]*`", "", _prose(_read(page)))):  # inline code is not a link
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a web address, or a place on the same page
        path = target.partition("#")[0]
        if not os.path.exists(os.path.normpath(os.path.join(base, path))):
            broken.append(target)
    assert not broken, f"{page} links to files that do not exist: {broken}"


def _expand(pattern: str) -> list[str]:
    """Shell-style braces, `{a,b}` and `{1..4}`, expanded (glob's `*` is left to glob)."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    span = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    options = [str(k) for k in range(int(span.group(1)), int(span.group(2)) + 1)] if span else body.split(",")
    return [e for o in options for e in _expand(pattern[: match.start()] + o + pattern[match.end() :])]


@pytest.mark.parametrize("page", PAGES)
def test_cited_bench_files_exist(page):
    """A figure cites its result as `bench/results/...` (or a harness as `bench/...py`): each names a file there.
    Superseded results are removed from bench/results/ (its README.md lists the current ones); a page still
    citing one fails here."""
    missing = []
    for span in re.findall(r"`([^`]+)`", _prose(_read(page))):
        path = span.split()[0] if span.split() else ""
        if not path.startswith("bench/") or re.search(r"[<$]", path):
            continue  # not a citation, or a template of one (`peers_<date>.md`)
        for each in _expand(path):
            if not glob.glob(os.path.join(ROOT, each)):
                missing.append(each)
    assert not missing, f"{page} cites files that are not in the repository: {missing}"


def test_every_page_is_in_the_site_nav():
    """mkdocs.yml's nav names every page in docs/ (MkDocs' strict build says so too, but only where it runs)."""
    nav = _read("mkdocs.yml").split("\nnav:", 1)[1]
    named = set(re.findall(r"([\w-]+\.md)\s*$", nav, flags=re.MULTILINE))
    assert named == {os.path.basename(p) for p in PAGES if p.startswith("docs")}


# --- tables that repeat the code -----------------------------------------------------------------


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _flags(command: str) -> set[str]:
    return {s for a in _subcommands()[command]._actions for s in a.option_strings}


def test_batch_column_table_is_the_code():
    """docs/batch.md's table of pairs-file columns names exactly the columns `read_pairs` accepts
    (`ilex.batch.pairs.COLUMNS`), with the same aliases (`ALIASES`), each standing for an `ilex register` flag."""
    rows = _table(_read("docs/batch.md"), "`pairs.csv` has a header row")
    assert rows[0][:3] == ["column", "alias", "`ilex register` flag"]
    columns = [_code(r[0])[0] for r in rows[1:]]
    assert sorted(columns) == sorted(COLUMNS), "docs/batch.md's columns differ from ilex.batch.pairs.COLUMNS"
    aliases = {_code(r[1])[0]: _code(r[0])[0] for r in rows[1:] if _code(r[1])}
    assert aliases == ALIASES, "docs/batch.md's aliases differ from ilex.batch.pairs.ALIASES"
    register = _flags("register")
    for row in rows[1:]:
        for flag in _code(row[2]):
            assert flag in register, f"docs/batch.md: column {row[0]} stands for {flag}, which ilex register lacks"
        for alias in _code(row[1]):
            assert f"-{alias}" in _code(row[2]), f"docs/batch.md: alias {alias} is not the flag of column {row[0]}"


def test_template_option_table_is_the_parser():
    """Every flag in docs/template.md's option table is one `ilex template` takes."""
    template = _flags("template")
    rows = _table(_read("docs/template.md"), "| option | meaning |")
    flags = [f.split()[0] for row in rows[1:] for f in _code(row[0])]
    assert flags and not [f for f in flags if f not in template], f"not flags of ilex template: {flags}"


def test_register_flags_in_docs_exist():
    """The flags docs/mri_synthmorph.md says are mri_synthmorph's ("Same letters") and the ones README.md and
    docs/usage.md describe in their option paragraphs are `ilex register`'s."""
    register = _flags("register")
    same = re.search(r"Same letters, same meaning: `([^`]+)`", _read("docs/mri_synthmorph.md")).group(1).split()
    readme = re.search(r"same letters and meanings \(`([^`]+)`", " ".join(_read("README.md").split())).group(1)
    assert same == readme.split(), "README.md and docs/mri_synthmorph.md list different mri_synthmorph flags"
    assert not [f for f in same if f not in register]
    usage = _read("docs/usage.md")
    paragraph = usage[usage.index("`ilex register` takes") :].split("\n\n")[0]
    described = {m for span in _code(paragraph) for m in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", span)}
    assert described and not (described - register), f"not flags of ilex register: {sorted(described - register)}"


# --- the layout table against the source tree ----------------------------------------------------


def test_layout_table_is_the_source_tree():
    """docs/architecture.md's layout table names every package and module under src/ilex: a row per package (or
    top-level module), and in the package's row every module of it, by file name; and its bench/ row every script
    in bench/. A new, moved or removed module fails here until the table says so."""
    text = _read("docs/architecture.md")
    rows = _table(text, "## Layout")[1:] + _table(text, "Beside `src/`")[1:]
    src = os.path.join(ROOT, "src")
    listed: set[str] = set()
    for row in rows:
        where = _code(row[0])[0]
        path = os.path.join(src, where)
        if where == "bench/":
            named = set(re.findall(r"`([\w]+\.py)`", row[1]))
            scripts = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "bench", "*.py"))}
            assert named == scripts, f"docs/architecture.md's bench/ row: {sorted(named ^ scripts)}"
        if not where.startswith("ilex"):
            continue
        assert os.path.exists(path), f"docs/architecture.md names {where}, which is not in src/"
        if where.endswith(".py"):
            listed.add(os.path.normpath(path))
            continue
        for name in re.findall(r"`([\w]+\.py)`", row[1]):
            module = os.path.normpath(os.path.join(path, name))
            assert os.path.isfile(module), f"docs/architecture.md: {where} has no {name}"
            listed.add(module)
        listed.add(os.path.normpath(os.path.join(path, "__init__.py")))  # the package itself is the row
    modules = {os.path.normpath(p) for p in glob.glob(os.path.join(src, "ilex", "**", "*.py"), recursive=True)}
    unlisted = sorted(os.path.relpath(p, src) for p in modules - listed)
    assert not unlisted, f"docs/architecture.md's layout table does not name {unlisted}"
