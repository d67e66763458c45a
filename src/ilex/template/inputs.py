"""The images a template is built from: paths on the command line, or a CSV, checked before any work.

CSV columns (header row required; order free; relative paths are relative to the CSV's directory):

| column  | meaning                                                                       |
|---------|-------------------------------------------------------------------------------|
| `image` | the image (required; `moving` is accepted as an alias)                         |
| `id`    | a name for its outputs (default: the file name without its extension)          |
| `init`  | an initial affine, image to template (LTA, ITK .txt/.tfm or .mat), every round  |
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass

from ..errors import FileProblem, ImageFileError, OptionError

_COLUMNS = ("image", "id", "init")
_ALIASES = {"moving": "image"}
_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh")


@dataclass(frozen=True)
class TemplateInput:
    """One image of the cohort: `id` names its outputs; `init` is an initial affine to the template or None."""

    id: str
    path: str
    init: str | None = None


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"


def read_image_list(path: str | os.PathLike) -> list[TemplateInput]:
    """The images of a CSV file (see the module docstring). Raises `FileProblem` for an unreadable
    file and `OptionError` for a missing or unknown column, an empty image cell or a repeated id."""
    path = os.fspath(path)
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [(_ALIASES.get(h.strip(), h.strip())) for h in (reader.fieldnames or [])]
            rows = [[(v or "").strip() for v in row.values()] for row in reader]
    except OSError as e:
        raise FileProblem(path, f"cannot read the image list ({e.strerror})") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise FileProblem(path, f"not a readable CSV file ({e})") from None
    unknown = [h for h in header if h not in _COLUMNS]
    if unknown:
        raise OptionError(f"{path}: unknown column {unknown[0]!r}; columns are {', '.join(_COLUMNS)}")
    if "image" not in header:
        raise OptionError(f"{path}: the header has no image column (found: {', '.join(header) or 'nothing'})")
    inputs = []
    for number, values in enumerate(rows, 1):
        row = dict(zip(header, values, strict=False))
        if not any(row.values()):
            continue
        if not row.get("image"):
            raise OptionError(f"{path}: row {number} has no image")
        image = os.path.normpath(os.path.join(base, row["image"]))
        init = os.path.normpath(os.path.join(base, row["init"])) if row.get("init") else None
        inputs.append(TemplateInput(_safe(row["id"]) if row.get("id") else "", image, init))
    return _with_ids(inputs, path)


def as_inputs(images) -> list[TemplateInput]:
    """`images` as `TemplateInput`s: a CSV path, or a list of paths, `TemplateInput`s or
    (id, path[, init]) tuples. Ids default to file names; repeated file names get _2, _3, ...
    Every id is made safe as a file name, as the CSV's are (`a/b` -> `a_b`, `../x` -> `x`), and
    every path absolute."""
    if isinstance(images, (str, os.PathLike)):
        if os.fspath(images).lower().endswith(".csv"):
            return read_image_list(images)
        images = [images]
    inputs = []
    for item in images:
        if isinstance(item, TemplateInput):
            # Ids become file and folder names: made safe as the CSV's and tuples' are, never trusted.
            inputs.append(
                TemplateInput(
                    _safe(item.id) if item.id else "",
                    os.path.abspath(os.fspath(item.path)),
                    os.path.abspath(os.fspath(item.init)) if item.init else None,
                )
            )
        elif isinstance(item, (tuple, list)):
            inputs.append(
                TemplateInput(
                    _safe(str(item[0])),
                    os.path.abspath(os.fspath(item[1])),
                    os.path.abspath(os.fspath(item[2])) if len(item) > 2 and item[2] else None,
                )
            )
        else:
            inputs.append(TemplateInput("", os.path.abspath(os.fspath(item))))
    return _with_ids(inputs, None)


def _with_ids(inputs: list[TemplateInput], csv_path: str | None) -> list[TemplateInput]:
    out, seen = [], set()
    for item in inputs:
        name = item.id
        if name and name in seen:
            raise OptionError(f"{csv_path or 'images'}: the id {name!r} is given twice")
        if not name:
            stem, name, k = _safe(_stem(item.path)), _safe(_stem(item.path)), 1
            while name in seen:
                k += 1
                name = f"{stem}_{k}"
        seen.add(name)
        out.append(TemplateInput(name, item.path, item.init))
    return out


def check_inputs(inputs: list[TemplateInput], initial: str | None = None) -> None:
    """Refuse, before any work, fewer than two images, and any image (or `initial` template) that is
    missing, unreadable, 4-D, 2-D, holds Inf, only NaN or is constant, or an init file that does not
    exist: `OptionError` or `ImageFileError`, naming the file. Contrasts may differ. NaN voxels
    (SPM's background) become the image's lowest finite value, with `load_image`'s warning, given
    here once per file in this process."""
    from concurrent.futures import ThreadPoolExecutor

    if len(inputs) < 2:
        raise OptionError(f"a template needs at least 2 images, got {len(inputs)}")
    seen = {}
    for item in inputs:
        real = os.path.realpath(item.path)
        if real in seen:
            raise OptionError(f"{item.path}: the same image is given twice (as {seen[real]} and {item.id})")
        seen[real] = item.id
        if item.init is not None and not os.path.isfile(item.init):
            raise ImageFileError(item.init, f"no such initial affine (for {item.id})")
    files = [(item.path, "image") for item in inputs] + ([(initial, "initial template")] if initial else [])
    # Two at a time (decompression leaves the GIL); the first bad file in the list is the one named.
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in pool.map(lambda file: _check_image(*file), files):
            pass


# Files whose voxels passed the checks in this process, as (path, size, mtime, what): the CLI checks the
# images before a cluster starts and `build_template` again, and reading 10 images at 1 mm takes 2 s.
_CHECKED: set[tuple] = set()


def _check_image(path: str, what: str) -> None:
    from ..image.io import load_image

    try:
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, what)
    except OSError:
        key = None  # load_image says what is wrong
    if key is not None and key in _CHECKED:
        return
    load_image(path, what=what)
    if key is not None:
        _CHECKED.add(key)
