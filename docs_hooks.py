"""MkDocs hooks (mkdocs.yml `hooks:`): the README as the site's front page, and links to repository files.

The docs cite files outside `docs/` (`../bench/results/...`, `../README.md`). MkDocs can only check links between
its own pages, and reports the others as "not found among documentation files"; with `--strict` that fails the
build, and turning the check off would let a broken link between pages through. So this hook takes the outside
links out of MkDocs' hands: it checks that each target exists (a warning, which `--strict` turns into a failure,
when it does not), and points the link at the file in the checkout, relative to where the page is built (`site/`
sits in the repository, so the links work when the site is opened from disk). Links between pages stay with MkDocs'
strict checks. tests/test_docs.py checks the same links without building the site.
"""

from __future__ import annotations

import logging
import os
import re

log = logging.getLogger("mkdocs.plugins.ilex")

# [text](target) and ![alt](target), outside fenced code blocks; the text may hold inline code.
LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")
_CODE_OR_LINK = re.compile(r"`[^`]*`|" + LINK.pattern)  # inline code first: `[a](b)` there is no link
_PLACEHOLDER = "ilex-repo:"  # a scheme MkDocs leaves alone; replaced once the page is HTML


def _repo(config) -> str:
    return os.path.dirname(os.path.abspath(config.config_file_path))


def _outside_code(markdown: str, rewrite) -> str:
    """`rewrite` applied to each link outside code."""

    def each(match):
        return match.group(0) if match.group(0).startswith("`") else rewrite(match)

    parts = re.split(r"(^```.*?^```[^\n]*$)", markdown, flags=re.MULTILINE | re.DOTALL)
    return "".join(part if part.startswith("```") else _CODE_OR_LINK.sub(each, part) for part in parts)


def _is_relative(target: str) -> bool:
    return not (re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "/")))


def on_page_read_source(page, config):
    """The front page is the README, its links made relative to docs/ (docs/index.md only says so)."""
    if page.file.src_uri != "index.md":
        return None
    repo, docs = _repo(config), os.path.abspath(config.docs_dir)
    with open(os.path.join(repo, "README.md"), encoding="utf-8") as f:
        readme = f.read()

    def rebase(match):
        target = match.group(2)
        if not _is_relative(target):
            return match.group(0)
        path, _, anchor = target.partition("#")
        rebased = os.path.relpath(os.path.join(repo, path), docs).replace(os.sep, "/")
        return f"{match.group(1)}{rebased}{'#' + anchor if anchor else ''}{match.group(3)}"

    return _outside_code(readme, rebase)


def on_page_markdown(markdown, page, config, files):
    """Links that leave docs/: checked here, and marked for `on_page_content`."""
    docs = os.path.abspath(config.docs_dir)
    here = os.path.dirname(os.path.join(docs, page.file.src_uri))

    def mark(match):
        target = match.group(2)
        if not _is_relative(target):
            return match.group(0)
        path, _, anchor = target.partition("#")
        absolute = os.path.normpath(os.path.join(here, path))
        if os.path.commonpath([absolute, docs]) == docs:
            return match.group(0)  # a link between pages: MkDocs checks it
        if not os.path.exists(absolute):
            log.warning(f"Doc file '{page.file.src_uri}' links to '{target}', which does not exist in the repository")
            return match.group(0)
        return f"{match.group(1)}{_PLACEHOLDER}{absolute}{'#' + anchor if anchor else ''}{match.group(3)}"

    return _outside_code(markdown, mark)


def on_page_content(html, page, config, files):
    """Marked links point at the checkout's file, relative to the built page."""
    built = os.path.dirname(os.path.join(os.path.abspath(config.site_dir), page.file.dest_uri))
    return re.sub(
        rf'(href|src)="{_PLACEHOLDER}([^"#]+)',
        lambda m: f'{m.group(1)}="{os.path.relpath(m.group(2), built).replace(os.sep, "/")}',
        html,
    )
