"""The pairs file of `ilex batch`: one registration per CSV row.

Columns: `COLUMNS`, with the short names `ALIASES` (header row required; order free; empty cells
mean "not set"). What each means is in docs/batch.md, whose table tests/test_docs.py checks
against these two constants. `levels` and `iterations` are space-separated whole numbers; levels are
in voxels of the optimiser's working grid, as `--levels` (e.g. `4 2`).

Aliases are case-sensitive, as the flags are (`o` is `-o`, `O` is `-O`). Relative paths are
relative to the directory of the CSV file. Every row needs at least one output.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field, replace

from ..errors import FileProblem, OptionError
from ..registration.outputs import OUTPUT_KINDS, output_files

OPTIMISER_COLUMNS = ("similarity", "levels", "iterations")
MASK_COLUMNS = ("mask_fixed", "mask_moving", "mask_threshold")
COLUMNS = ("moving", "fixed", *OUTPUT_KINDS, "init", "hyper", "method", *OPTIMISER_COLUMNS, *MASK_COLUMNS, "id")
ALIASES = {
    "o": "out_moving",
    "O": "out_fixed",
    "t": "trans",
    "T": "inverse",
    "d": "out_dir",
    "i": "init",
    "r": "hyper",
    "m": "method",
}
_PATH_COLUMNS = ("moving", "fixed", "init", "mask_fixed", "mask_moving", *OUTPUT_KINDS)


@dataclass(frozen=True)
class Pair:
    """One row: what to register and where the outputs go (absolute paths).

    `outputs` maps output kind (`ilex.registration.outputs.OUTPUT_KINDS`) to path. `hyper`,
    `method` and the optimiser's `options` (similarity, levels, iterations) are None or left
    out where the row leaves the command's default. `problem` is set for a row that cannot run
    (e.g. a λ that is not a number); it fails alone.
    """

    index: int
    moving: str
    fixed: str
    outputs: dict[str, str] = field(default_factory=dict)
    hyper: float | None = None
    method: str | None = None
    init: str | None = None
    id: str | None = None
    problem: str | None = None
    options: dict = field(default_factory=dict)
    # Cost-function masks (`register`'s `mask_fixed`, `mask_moving`, `mask_threshold`), as set.
    masks: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.id or f"row {self.index}"


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """Read the pairs file at `path` (see the module docstring). Rows are numbered from 1.

    Raises `FileProblem` for an unreadable file, and `OptionError` for a missing or unknown
    column, or two rows writing the same file. Problems of one row (an empty `moving`, a λ
    that is not a number, no output) are kept in `Pair.problem` so that the row fails alone.
    """
    path = os.fspath(path)
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [row for row in reader if any((v or "").strip() for v in row.values() if isinstance(v, str))]
    except OSError as e:
        raise FileProblem(path, f"cannot read the pairs file ({e.strerror})") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise FileProblem(path, f"not a readable CSV file ({e})") from None
    names = {}
    for name in header:
        column = ALIASES.get(name.strip(), name.strip())
        if column not in COLUMNS:
            raise OptionError(
                f"{path}: unknown column {name!r}; columns are {', '.join(COLUMNS)} "
                f"(aliases {', '.join(f'{a}={c}' for a, c in ALIASES.items())})"
            )
        if column in names.values():
            raise OptionError(f"{path}: column {column!r} is given twice")
        names[name] = column
    missing = [c for c in ("moving", "fixed") if c not in names.values()]
    if missing:
        raise OptionError(
            f"{path}: the header has no {' or '.join(missing)} column (found: {', '.join(header) or 'nothing'})"
        )
    pairs = [
        _pair(k, {names[n]: (v or "").strip() for n, v in row.items() if n in names}, base)
        for k, row in enumerate(rows, 1)
    ]
    _check_files_between_rows(path, pairs)
    return pairs


def check_inputs(pairs: list[Pair]) -> list[Pair]:
    """`pairs` in their order, each row whose input files cannot be used given that as its
    `problem`, so that it fails alone before any registration rather than when its turn comes:
    a moving or fixed image that is missing, not a file or not a NIfTI or MGZ image (its header
    is read, not its voxels), an init file that is missing or unreadable. The text is what
    `ilex register` says of the same file; a row with a problem already keeps its own.
    """
    from ..image.io import check_image_file

    def problem_of(file: str, what: str) -> str | None:
        try:
            if what != "initial-affine file":
                check_image_file(file, what=what)
            elif not os.path.isfile(file):
                raise FileProblem(file, f"no such {what}")
            elif not os.access(file, os.R_OK):
                raise FileProblem(file, f"cannot read this {what} (permission denied)")
        except FileProblem as e:
            return str(e)
        return None

    seen: dict[tuple[str, str], str | None] = {}  # a study's rows share their template: read it once
    checked = []
    for pair in pairs:
        problem = pair.problem
        for file, what in (
            (pair.moving, "moving image"),
            (pair.fixed, "fixed image"),
            (pair.init, "initial-affine file"),
            (pair.masks.get("mask_fixed"), "fixed mask"),
            (pair.masks.get("mask_moving"), "moving mask"),
        ):
            if problem is None and file:
                if (file, what) not in seen:
                    seen[file, what] = problem_of(file, what)
                problem = seen[file, what]
        checked.append(pair if problem == pair.problem else replace(pair, problem=problem))
    return checked


def _resolve_path(value: str, base: str) -> str:
    """The absolute path a CSV cell `value` names, read from the folder `base` as a shell there would.

    A path in the pairs file means what it means to a shell opened in the CSV's folder: relative
    paths start there, absolute paths are kept, and `..` may climb out of it (a BIDS study writes to
    `../derivatives/...`; the CSV is the user's own file, run with the user's rights, as `ilex
    register -o ../x` is). Missing output folders are created when the pair's outputs are written.
    `..` is resolved by the file system, from the folder a symbolic link leads to, not by deleting
    text (`os.path.normpath` would send `link/../x` to the link's own parent); the rest of the path,
    and the file itself, keep the names the user gave. docs/batch.md says the same.
    """
    path = os.path.join(base, value)
    parts = path.split(os.sep)
    if ".." not in parts:
        return os.path.normpath(path)
    last = len(parts) - 1 - parts[::-1].index("..")
    head, tail = os.sep.join(parts[: last + 1]) or os.sep, os.sep.join(parts[last + 1 :])
    return os.path.normpath(os.path.join(os.path.realpath(head), tail))


def _pair(index: int, row: dict[str, str], base: str) -> Pair:
    values = {c: (_resolve_path(v, base) if c in _PATH_COLUMNS and v else v) for c, v in row.items()}
    outputs = {kind: values[kind] for kind in OUTPUT_KINDS if values.get(kind)}
    problem = None
    hyper = None
    if values.get("hyper"):
        try:
            hyper = float(values["hyper"])
        except ValueError:
            problem = f"hyper {values['hyper']!r} is not a number"
    method = values.get("method") or None
    if method is not None:
        from ..registration.methods import resolve_method_name

        try:
            method = resolve_method_name(method)
        except ValueError as e:
            problem = problem or f"method {method!r}: {e}"
    options = {}
    if values.get("similarity"):
        options["similarity"] = values["similarity"]
    for column in ("levels", "iterations"):
        if values.get(column):
            try:
                options[column] = tuple(int(v) for v in values[column].replace(",", " ").split())
            except ValueError:
                problem = problem or f"{column} {values[column]!r}: give whole numbers separated by spaces"
    masks = {c: values[c] for c in ("mask_fixed", "mask_moving") if values.get(c)}
    if values.get("mask_threshold"):
        try:
            masks["mask_threshold"] = float(values["mask_threshold"])
        except ValueError:
            problem = problem or f"mask_threshold {values['mask_threshold']!r} is not a number"
    for column in ("moving", "fixed"):
        if not values.get(column):
            problem = problem or f"no {column} image"
    if not outputs:
        problem = problem or f"no output: set at least one of {', '.join(OUTPUT_KINDS)}"
    return Pair(
        index,
        values.get("moving", ""),
        values.get("fixed", ""),
        outputs,
        hyper,
        method,
        values.get("init") or None,
        values.get("id") or None,
        problem,
        options,
        masks,
    )


def _check_files_between_rows(path: str, pairs: list[Pair]) -> None:
    """Refuse two rows writing one file, and a row reading (moving, fixed, init) a file another row
    writes: its result would depend on the rows' order, and on Dask on which worker is faster.
    A row's outputs against its own inputs are `check_outputs`' (that row fails alone)."""
    writers: dict[str, tuple[str, str]] = {}
    for pair in pairs:
        for _, file in output_files(pair.outputs):
            real = os.path.realpath(file)
            if real in writers and writers[real][0] != pair.label:
                raise OptionError(f"{path}: {pair.label} and {writers[real][0]} both write {file}")
            writers[real] = (pair.label, file)
    for pair in pairs:
        for file in (pair.moving, pair.fixed, pair.init, pair.masks.get("mask_fixed"), pair.masks.get("mask_moving")):
            writer = writers.get(os.path.realpath(file)) if file else None
            if writer is not None and writer[0] != pair.label:
                raise OptionError(
                    f"{path}: {pair.label} reads {file}, which {writer[0]} writes; a row cannot use another "
                    "row's output (run it in a second batch)"
                )
