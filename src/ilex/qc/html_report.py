"""The pair report, DIR/report.html: one self-contained page per registration.

What `--qc DIR` writes for it: DIR/report.npz (the cut slices and the run's times, `slices.py`)
and DIR/report.html, drawn from report.npz and DIR/qc.json only, so that `ilex report DIR` draws
it again without registering. The page opens with a verdict (what looks wrong, by the rules in
`warnings`), then the before/after panel, the figures, the Jacobian map and how the
registration was run.
"""

from __future__ import annotations

import json
import os

from . import _html
from ._html import escape, number
from .verdict import RULE_TEXT, failed_rules, rules

REPORT_FILES = ("report.npz", "report.html")

# qc.json keys the page shows in their own sections; any other key is listed under "how it was run".
_SHOWN = {
    "moving",
    "fixed",
    "folding_fraction",
    "folding_voxels",
    "jacobian_min",
    "jacobian_max",
    "jacobian_mean",
    "jacobian_p01",
    "jacobian_p99",
    "largest_expansions",
    "largest_compressions",
    "affine",
    "model",
    "hyper",
    "steps",
    "extent",
    "head_folding_fraction",
    "head_log_jacobian_std",
    "head_log_jacobian_p01",
    "head_log_jacobian_p99",
    "head_jacobian_min",
    "head_jacobian_max",
    "head_overlap_before",
    "head_overlap_after",
    "head_size_mm",
    "verdict",
}


def warnings(record: dict) -> list[str]:
    """What looks wrong in a pair's qc.json `record`, one sentence each (empty: nothing): the
    reasons of the rules it fails (`verdict.rules`)."""
    return [r.reason for r in failed_rules(record)]


def _shown_value(rule) -> str:
    value = rule.value
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return "–".join(number(v) for v in value)
    return number(value)


def _rules_table(record: dict) -> str:
    outcome = {True: "pass", False: '<span class="flag">FAIL</span>', None: "n/a"}
    body = "".join(
        f'<tr data-rule="{escape(r.name)}" data-passed="{escape(r.passed)}"><td><code>{escape(r.name)}</code></td>'
        f"<td class=num>{_shown_value(r)}</td><td>{escape(r.fails_when)} {escape(number(r.threshold))}</td>"
        f"<td>{outcome[r.passed]}</td><td>{escape(r.reason)}</td></tr>"
        for r in rules(record)
    )
    return (
        '<table class="rules" id="rules"><tr><th>rule</th><th>value</th><th>fails when</th><th>outcome</th>'
        f"<th>why</th></tr>{body}</table>"
    )


def _verdict(record: dict) -> str:
    found = warnings(record)
    legend = f'<span class="legend">{escape(RULE_TEXT)}</span>'
    if not found:
        head = '<div class="verdict ok" id="verdict"><b>Nothing looks wrong.</b> '
    else:
        items = "".join(f"<li>{escape(w)}</li>" for w in found)
        head = f'<div class="verdict bad" id="verdict"><b>Check this registration:</b><ul>{items}</ul>'
    return f'{head}{legend} <a class=legend href="#rules">Every rule, as measured.</a></div>'


def _position(entries) -> str:
    return "<br>".join(
        f"{e['jacobian']:.3g} at RAS ({', '.join(f'{c:.0f}' for c in e['ras_mm'])}) mm" for e in entries or []
    )


def _figures(record: dict) -> str:
    def pct(key):
        return f"{100 * record[key]:.4g} %" if record.get(key) is not None else "–"

    similarity = []
    for kind, label in (
        ("nmi", "normalised mutual information (1 = independent, 2 = identical)"),
        ("correlation", "correlation (−1 to 1; negative across contrasts is normal)"),
    ):
        if f"similarity_{kind}_after" in record:
            similarity.append(
                (
                    label,
                    (
                        f"<span class=mono>{number(record.get(f'similarity_{kind}_before'))}</span> before "
                        f"→ <b class=mono>{number(record.get(f'similarity_{kind}_after'))}</b> after"
                    ),
                )
            )
    if "head_overlap_after" in record:
        similarity.append(
            (
                "heads' overlap (share of the smaller head inside the other)",
                (
                    f"<span class=mono>{number(record.get('head_overlap_before'))}</span> before → "
                    f"<b class=mono>{number(record.get('head_overlap_after'))}</b> after; the fixed head's size "
                    f"{number(record.get('head_size_mm'))} mm (diameter of a sphere of its volume)"
                ),
            )
        )
    chosen = [(k.replace("_", " "), escape(v)) for k, v in record.items() if "similarity" in k and isinstance(v, str)]
    jac = [
        (
            "folding (det J ≤ 0), head / whole grid",
            (
                f"{pct('head_folding_fraction')} / {pct('folding_fraction')} "
                f"({number(record.get('folding_voxels'))} voxels)"
            ),
        ),
        (
            "log det J in the head: spread (SD), 1st–99th percentile",
            (
                f"{number(record.get('head_log_jacobian_std'))}, {number(record.get('head_log_jacobian_p01'))} to "
                f"{number(record.get('head_log_jacobian_p99'))}"
            ),
        ),
        (
            "det J in the head: min, max",
            f"{number(record.get('head_jacobian_min'))}, {number(record.get('head_jacobian_max'))}",
        ),
        (
            "det J, whole grid: min, mean, max",
            ", ".join(number(record.get(k)) for k in ("jacobian_min", "jacobian_mean", "jacobian_max")),
        ),
        ("largest expansions in the head", _position(record.get("largest_expansions"))),
        ("largest compressions in the head", _position(record.get("largest_compressions"))),
    ]
    affine = record.get("affine")
    parts = []
    if affine:
        parts = [
            (
                "affine part (moving → fixed, world; with -i)",
                f"rotation {affine['rotation_deg']:.2f}°, scales {', '.join(f'{s:.3f}' for s in affine['scales'])}, "
                f"translation ({', '.join(f'{t:.1f}' for t in affine['translation_mm'])}) mm"
                + (f", head centre moved {affine['centre_shift_mm']:.1f} mm" if "centre_shift_mm" in affine else "")
                + (", <span class=flag>reflects</span>" if affine.get("reflection") else ""),
            )
        ]
    return (
        "<h2>Figures</h2><table>" + _html.rows(similarity + chosen + jac + parts) + "</table>"
        '<p class="legend">Similarity is measured inside the head (the fixed image above 10 % of its 99th '
        "percentile), on about a million voxels; “before” places the moving image by the two headers alone (no "
        "registration, no -i).</p>"
    )


def _run(record: dict, info: dict) -> str:
    from .. import __version__

    labels = {"model": "method (-m)", "hyper": "λ (-r)", "steps": "integration steps (-n)", "extent": "extent (-e, mm)"}
    items = [(labels[k], escape(record[k])) for k in labels if k in record]
    items += [
        (k.replace("_", " "), escape(json.dumps(v) if isinstance(v, (dict, list)) else v))
        for k, v in record.items()
        if k not in _SHOWN and not k.startswith("similarity_") and not ("similarity" in k and isinstance(v, str))
    ]
    items.append(("report drawn by", f"ilex {escape(__version__)}"))
    times, memory = info.get("times", {}), info.get("memory_gib", {})
    stages = "".join(
        f"<tr><td>{escape(name)}</td><td class=num>{seconds:.2f} s</td>"
        f"<td class=num>{number(memory.get(name))}{' GiB' if name in memory else ''}</td></tr>"
        for name, seconds in times.items()
    )
    total = f"<tr><th>total</th><th class=num>{sum(times.values()):.2f} s</th><th></th></tr>" if times else ""
    table = (
        f"<table><tr><th>stage</th><th>time</th><th>peak memory so far</th></tr>{stages}{total}</table>"
        if stages
        else "<p>No stage times were recorded.</p>"
    )
    return (
        "<h2>How it was run</h2><table>"
        + _html.rows(items)
        + "</table>"
        + table
        + '<p class="legend">Stages up to the moment the page was drawn (writing the outputs, under way then, is '
        "not in it). Peak memory is the process’s resident peak at the end of each stage.</p>"
    )


def render(record: dict, slices) -> str:
    """The page for one pair: `record` is its qc.json, `slices` its `ReportSlices`."""
    from .figures import slice_layers

    layers = slice_layers(slices)
    moving, fixed = record.get("moving") or "moving", record.get("fixed") or "fixed"
    title = f"{os.path.basename(str(moving))} → {os.path.basename(str(fixed))}"
    panel = f"""<h2>Before / after</h2>
<div class="panel" id="beforeafter">
<div class="controls">At rest: the moved image with the fixed image's edges. Hover over (or focus) the
picture to see the fixed image.</div>
<input type="checkbox" id="pin"><label for="pin" class="controls"> show fixed</label>
<input type="checkbox" id="sidebyside"><label for="sidebyside" class="controls"> both, one above the other</label>
<br><div class="fade" tabindex="0">
<img class="under" alt="fixed image" src="{_html.data_uri(layers["fixed"])}">
<img class="over" alt="moved image with the fixed image's edges" src="{_html.data_uri(layers["moved"])}">
</div>
<div class="legend">Rest: the moved image, with the fixed image's edges
<span class="swatch" style="background:#ff3030"></span>on top: where anatomy and edges part, the registration missed.
Hover: the fixed image alone. Slices are cut inside the fixed head's bounding box; intensities windowed at the
0.5th–99.5th percentiles.{_mask_legend(slices)}</div>"""
    jacobian = f"""<h2>Jacobian determinant</h2>
<img class="plot" id="jacobian" alt="Jacobian determinant over the fixed image"
 src="{_html.data_uri(layers["jacobian"])}">
<div class="legend">det J of the forward warp over the fixed image, inside the head: red expands, blue compresses
(log scale, 0.5 to 2), <span class="swatch" style="background:#ffe600"></span>yellow folds (det J ≤ 0).</div>"""
    files = (
        '<p class="legend">Files: <a href="qc.json">qc.json</a> · <a href="jacobian.nii.gz">jacobian.nii.gz</a> · '
        '<a href="checkerboard.png">checkerboard.png</a></p>'
    )
    body = (
        f"<h1>Registration report</h1><p class=sub>{escape(title)}<br>moving <code>{escape(moving)}</code><br>"
        f"fixed <code>{escape(fixed)}</code></p>{_verdict(record)}{panel}{_figures(record)}{jacobian}"
        f"<h2>Rules</h2>{_rules_table(record)}{_run(record, slices.info)}{files}"
        "<footer>Written by ilex. Self-contained: opens from disk, fetches nothing.</footer>"
    )
    return _html.page(f"ilex QC: {title}", body)


def _mask_legend(slices) -> str:
    if not getattr(slices, "mask", None):
        return ""
    return (
        ' <span class="swatch" style="background:#30d0ff"></span>The cost-function mask\'s outline: the similarity '
        "was measured inside it only."
    )


def write_pair_report(directory: str | os.PathLike, record: dict, slices) -> str:
    """Write DIR/report.npz and DIR/report.html (atomically); returns the page's path."""
    from .._atomic import atomic_file
    from .slices import save_slices

    directory = os.fspath(directory)
    save_slices(os.path.join(directory, "report.npz"), slices)
    path = os.path.join(directory, "report.html")
    text = render(record, slices)
    with atomic_file(path, suffix=".html") as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def read_qc_json(directory: str) -> dict:
    from ..errors import FileProblem

    path = os.path.join(directory, "qc.json")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        raise FileProblem(path, "does not exist: not a QC directory written by --qc") from None
    except (OSError, ValueError) as e:
        raise FileProblem(path, f"not a readable qc.json ({e})") from None
    if not isinstance(record, dict):
        raise FileProblem(path, "not a QC record (expected a JSON object)")
    return record


def rebuild_pair_report(directory: str | os.PathLike) -> str:
    """Draw DIR/report.html again from DIR/qc.json and DIR/report.npz; returns its path.
    Raises `FileProblem` when either is missing or unreadable (checked before anything is written)."""
    from .._atomic import atomic_file
    from .slices import load_slices

    directory = os.fspath(directory)
    record = read_qc_json(directory)
    slices = load_slices(os.path.join(directory, "report.npz"))
    path = os.path.join(directory, "report.html")
    text = render(record, slices)
    with atomic_file(path, suffix=".html") as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    return path
