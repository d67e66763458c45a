"""The study report, PREFIX.report.html: every pair of a batch (or a template's rounds) on one page.

Failed pairs come first with their errors, then the pairs that fail a per-pair rule (`verdict.py`,
the rules of each pair's page, read from its qc.json) with their reasons; then one strip plot per
metric, pairs far from the others flagged by a robust rule (`outliers`, second to the per-pair
rules: it cannot see a failure when the pairs fall in two groups); a template's round-by-round
convergence when given;
and the table of every pair (sortable, failed and flagged first by default), each row with a
small before/after picture and a link to its pair report. Built from the batch's records (the
summary JSON's `pairs`) and each pair's QC directory (qc.json, report.npz), so it can be drawn
again at any time (`ilex report PREFIX.json`).
"""

from __future__ import annotations

import csv
import json
import os
import urllib.parse
from dataclasses import dataclass

import numpy as np

from . import _html
from ._html import escape, number
from .verdict import RULE_TEXT, failed_rules

# Iglewicz and Hoaglin's modified z-score, 0.6745 (x - median) / MAD; |z| > 3.5 is an outlier.
OUTLIER_Z = 3.5
MIN_PAIRS_FOR_OUTLIERS = 3
ROUNDS_COLUMNS = ("round", "mean_displacement_mm", "max_displacement_mm", "mean_similarity", "template_change")
# Read when present (`ilex template` writes them since issue 33; older tables lack them): the cluster's state per round.
CLUSTER_COLUMNS = (
    ("seconds", "round (s)", 1.0),
    ("workers", "workers", 1.0),
    ("busy_seconds_mean", "busy per worker, mean (s)", 1.0),
    ("busy_seconds_max", "busy per worker, max (s)", 1.0),
    ("waiting_seconds_mean", "waiting per worker, mean (s)", 1.0),
    ("serial_seconds", "serial (s)", 1.0),
    ("serial_share", "serial share (%)", 100.0),
    ("peak_memory_gib", "peak memory (GiB)", 1.0),
)


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    unit: str
    worse: str  # "high" or "low": the direction that is flagged


METRICS = (
    Metric("folding_percent", "folding", "% of voxels, det J ≤ 0", "high"),
    Metric("log_jacobian_spread", "log-Jacobian spread", "SD of log det J in the head", "high"),
    Metric("similarity_after", "similarity after", "normalised mutual information", "low"),
    Metric("seconds", "time", "seconds", "high"),
    Metric("peak_memory_gib", "memory", "peak GiB", "high"),
)

RULE = (
    f"A pair is an outlier on a metric when its modified z-score, 0.6745 × (value − median) / MAD over the pairs "
    f"that ran, is beyond {OUTLIER_Z} in the direction that is worse (more folding, wider log-Jacobian spread, "
    f"lower similarity, more time or memory); when the MAD is 0, 0.7979 × (value − median) / (mean absolute "
    f"deviation) takes its place; with fewer than {MIN_PAIRS_FOR_OUTLIERS} values nothing is flagged "
    f"(Iglewicz and Hoaglin, 1993). This rule is second to the per-pair rules: it only compares pairs with each "
    f"other. When the pairs fall in two groups of similar size (two contrasts, two sites) the MAD is about half "
    f"the gap between them, so a pair must lie about 2.6 gaps beyond the median to be flagged: it flags almost "
    f"nothing, and a failed registration between or near the groups goes unflagged here (with groups of unequal "
    f"size it may flag the smaller one whole). The per-pair rules, which do not look at the other pairs, catch those."
)


def outliers(values: list[float | None], worse: str) -> list[bool]:
    """Which of `values` the robust rule (`RULE`) flags; None values are never flagged."""
    known = np.array([v for v in values if v is not None and np.isfinite(v)], np.float64)
    if known.size < MIN_PAIRS_FOR_OUTLIERS:
        return [False] * len(values)
    median = np.median(known)
    mad = np.median(np.abs(known - median))
    if mad > 0:
        scale = mad / 0.6745
    else:
        mean_ad = np.mean(np.abs(known - median))
        if mean_ad == 0:
            return [False] * len(values)
        scale = mean_ad / 0.7979
    sign = 1.0 if worse == "high" else -1.0
    return [bool(v is not None and np.isfinite(v) and sign * (v - median) / scale > OUTLIER_Z) for v in values]


def read_rounds(path: str | os.PathLike) -> dict[str, list[float | None]]:
    """A template's convergence table: CSV with the columns `ROUNDS_COLUMNS`, one row per round,
    and those of `CLUSTER_COLUMNS` that it has (a table written before them has none).
    An empty cell is a figure not measured, None (round 0 of `ilex template` has no template change).
    Raises `FileProblem` for a missing file, a missing column, a row without its round or a cell that
    is neither empty nor a number."""
    from ..errors import FileProblem

    path = os.fspath(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ROUNDS_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise FileProblem(
                    path, f"the rounds table has no {', '.join(missing)} column (expected {','.join(ROUNDS_COLUMNS)})"
                )
            present = [c for c, _, _ in CLUSTER_COLUMNS if c in (reader.fieldnames or [])]
            columns = (*ROUNDS_COLUMNS, *present)
            table = {c: [] for c in columns}
            for line, row in enumerate(reader, 2):
                for c in columns:
                    cell = row[c]
                    if cell is None:  # csv gives None where a row is shorter than the header
                        raise FileProblem(path, f"line {line}: no {c} cell (the row is shorter than the header)")
                    if not cell.strip():
                        if c == "round":
                            raise FileProblem(path, f"line {line}: the round is empty")
                        table[c].append(None)
                        continue
                    try:
                        table[c].append(float(cell))
                    except ValueError:
                        raise FileProblem(path, f"line {line}: {c} {cell!r} is not a number") from None
    except OSError as e:
        raise FileProblem(path, f"cannot read the rounds table ({e.strerror})") from None
    if not table["round"]:
        raise FileProblem(path, "the rounds table has no rows")
    return table


def _cluster_table(rounds: dict[str, list[float | None]]) -> str:
    """The cluster's state per round (the `CLUSTER_COLUMNS` the table has), or "" without any."""
    columns = [(c, title, scale) for c, title, scale in CLUSTER_COLUMNS if c in rounds]
    if not columns:
        return ""
    head = "<tr><th>round</th>" + "".join(f"<th>{escape(title)}</th>" for _, title, _ in columns) + "</tr>"
    rows = []
    for k, r in enumerate(rounds["round"]):
        cells = "".join(
            "<td></td>" if rounds[c][k] is None else f"<td>{number(rounds[c][k] * scale)}</td>"
            for c, _, scale in columns
        )
        rows.append(f"<tr><td>{int(r)}</td>{cells}</tr>")
    return (
        '<h2>The cluster, round by round</h2><table id="cluster">'
        + head
        + "".join(rows)
        + '</table><p class="legend">Busy: the seconds each worker spent registering; waiting: the rest of the '
        "round's parallel part (its batches, the wait for the sums and, on Dask, for the final outputs); serial: "
        "the client's own work, alone (reading the template, the shape update, without Dask the final outputs), "
        "and its share of the round.</p>"
    )


def _pair_facts(record: dict) -> dict:
    """A record's metrics, its qc.json and report.npz where the pair has a QC directory."""
    facts = {"qc": None, "slices": None, "report": None}
    qc_dir = (record.get("outputs") or {}).get("qc")
    if qc_dir and os.path.isfile(os.path.join(qc_dir, "qc.json")):
        try:
            with open(os.path.join(qc_dir, "qc.json"), encoding="utf-8") as f:
                facts["qc"] = json.load(f)
        except (OSError, ValueError):
            facts["qc"] = None
        if os.path.isfile(os.path.join(qc_dir, "report.html")):
            facts["report"] = os.path.join(qc_dir, "report.html")
        if os.path.isfile(os.path.join(qc_dir, "report.npz")):
            from ..errors import FileProblem
            from .slices import load_slices

            try:
                facts["slices"] = load_slices(os.path.join(qc_dir, "report.npz"), ("fixed", "moved", "head"))
            except FileProblem:
                facts["slices"] = None
    qc = facts["qc"] or {}
    ran = record.get("status") != "failed"
    folding = record.get("folding_percent")
    if folding is None and qc.get("folding_fraction") is not None:
        folding = 100 * qc["folding_fraction"]
    facts["values"] = {
        "folding_percent": folding if ran else None,
        "log_jacobian_spread": qc.get("head_log_jacobian_std") if ran else None,
        "similarity_after": qc.get("similarity_nmi_after") if ran else None,
        "seconds": record.get("seconds") if record.get("status") == "done" else None,
        "peak_memory_gib": record.get("peak_memory_gib") if record.get("status") == "done" else None,
    }
    return facts


def _says_something(value) -> bool:
    # Empty values are left out of "How it was run"; an empty list, tuple or mapping alike, as
    # settings read back from JSON give lists where the batch had tuples.
    if isinstance(value, (list, tuple, dict)):
        return len(value) > 0
    return value is not None and value != ""


def _data_value(value) -> str:
    # The sort key a cell carries: the number itself, empty where there is none.
    return "" if value is None else str(value)


def _link(target: str, page_dir: str) -> str:
    return urllib.parse.quote(os.path.relpath(target, page_dir).replace(os.sep, "/"))


_SORT_SCRIPT = """
document.querySelectorAll('table.study th[data-sort]').forEach(function (th) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
    var up = th.getAttribute('data-dir') !== 'up';
    th.setAttribute('data-dir', up ? 'up' : 'down');
    var numeric = th.getAttribute('data-sort') === 'number';
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute('data-value'), y = b.cells[col].getAttribute('data-value');
      if (numeric) { x = x === '' ? Infinity : +x; y = y === '' ? Infinity : +y; return up ? x - y : y - x; }
      return up ? x.localeCompare(y) : y.localeCompare(x);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def render_study(
    records: list[dict],
    page_dir: str,
    *,
    settings: dict | None = None,
    rounds: dict[str, list[float | None]] | None = None,
    title: str = "Study report",
) -> str:
    """The study page for `records` (dicts as `PairRecord.to_dict()` gives them); links are
    relative to `page_dir`, where the page will be written."""
    from .. import __version__
    from .figures import convergence_plot, strip_plot, thumbnail

    facts = [_pair_facts(r) for r in records]
    labels = [str(r.get("pair") or f"row {r.get('index')}") for r in records]
    flags = {m.key: outliers([f["values"][m.key] for f in facts], m.worse) for m in METRICS}
    flagged_by = [[m.title for m in METRICS if flags[m.key][k]] for k in range(len(records))]
    broken = [
        failed_rules(f["qc"]) if f["qc"] and records[k].get("status") != "failed" else [] for k, f in enumerate(facts)
    ]
    failed = [k for k, r in enumerate(records) if r.get("status") == "failed"]
    totals = {s: sum(r.get("status") == s for r in records) for s in ("done", "skipped", "failed")}

    parts = [
        f"<h1>{escape(title)}</h1>",
        (
            f"<p class=sub>{len(records)} pairs: {totals['done']} done, {totals['skipped']} skipped "
            f"(outputs from an earlier run), {totals['failed']} failed.</p>"
        ),
    ]
    n_broken = sum(bool(b) for b in broken)
    thumbs = [
        ""
        if f["slices"] is None
        else (
            '<img class="thumb" alt="moved image with the fixed image&#39;s edges: sagittal, coronal, axial" '
            f'src="{_html.data_uri(thumbnail(f["slices"]))}">'
        )
        for f in facts
    ]
    n_flagged = sum(bool(f) for f in flagged_by)
    cls = "bad" if failed or n_broken else "warn" if n_flagged else "ok"
    parts.append(
        f'<div class="verdict {cls}" id="verdict"><b>{len(failed)} failed, {n_broken} flagged by the per-pair rules, '
        f"{n_flagged} flagged as outliers.</b> "
        f'<span class="legend">Each pair is first judged on its own by the rules of its page ({escape(RULE_TEXT)}); '
        f"then against the other pairs by the outlier rule below.</span></div>"
    )
    if failed:
        rows = "".join(
            f'<tr data-pair="{escape(labels[k])}"><td>{escape(labels[k])}</td>'
            f"<td><code>{escape(records[k].get('moving'))}</code> → <code>{escape(records[k].get('fixed'))}</code></td>"
            f'<td class="error">{escape(records[k].get("error") or "")}</td></tr>'
            for k in failed
        )
        parts.append(
            f'<h2>Failed pairs</h2><table class="study" id="failed"><tr><th>pair</th><th>images</th>'
            f"<th>error</th></tr>{rows}</table>"
        )
    if n_broken:
        rows = []
        for k in (k for k in range(len(records)) if broken[k]):
            name = escape(labels[k])
            if facts[k]["report"]:
                name = f'<a href="{_link(facts[k]["report"], page_dir)}">{name}</a>'
            reasons = "".join(f"<li><code>{escape(r.name)}</code>: {escape(r.reason)}</li>" for r in broken[k])
            rows.append(
                f'<tr data-pair="{escape(labels[k])}"><td>{name}</td><td>{thumbs[k]}</td>'
                f'<td><ul class="flagged-list">{reasons}</ul></td></tr>'
            )
        parts.append(
            '<h2>Pairs the rules flag</h2><table class="study" id="flagged"><tr><th>pair</th>'
            f"<th>moved, fixed edges</th><th>rules failed</th></tr>{''.join(rows)}</table>"
        )
    strips = []
    for m in METRICS:
        present = [k for k, f in enumerate(facts) if f["values"][m.key] is not None]
        if not present:
            continue
        png = strip_plot(
            m.title,
            [facts[k]["values"][m.key] for k in present],
            [flags[m.key][k] or bool(broken[k]) for k in present],
            [labels[k] for k in present],
            m.unit,
        )
        strips.append(f'<img class="plot strip" alt="{escape(m.title)} across pairs" src="{_html.data_uri(png)}">')
    if strips:
        parts.append(
            "<h2>Metrics across pairs</h2><div class=strips>" + "".join(strips) + "</div>"
            f'<p class="legend">One point per pair (sideways jitter only spreads them); dashed line: the median; '
            f"red: an outlier on that metric, or a pair the per-pair rules flag. {escape(RULE)}</p>"
        )
    if rounds is not None:
        png = convergence_plot(rounds)
        parts.append(
            f'<h2>Convergence</h2><img class="plot" id="convergence" alt="convergence by round" '
            f'src="{_html.data_uri(png)}"><p class="legend">One point per round of the template.</p>'
        )
        parts.append(_cluster_table(rounds))
    order = sorted(
        range(len(records)),
        key=lambda k: (
            records[k].get("status") != "failed",
            not broken[k],
            -len(flagged_by[k]),
            records[k].get("index") or k,
        ),
    )
    head = (
        '<tr><th data-sort="text">pair</th><th data-sort="text">status</th><th>moved, fixed edges</th>'
        + "".join(f'<th data-sort="number">{escape(m.title)}</th>' for m in METRICS)
        + '<th data-sort="text">rules failed</th><th data-sort="text">outlier on</th><th>images</th></tr>'
    )
    body = []
    for k in order:
        r, f = records[k], facts[k]
        name = escape(labels[k])
        if f["report"]:
            name = f'<a href="{_link(f["report"], page_dir)}">{name}</a>'
        thumb = thumbs[k]
        cells = "".join(
            f'<td class="num{" flag" if flags[m.key][k] else ""}" data-value="{_data_value(f["values"][m.key])}">'
            f"{number(f['values'][m.key])}</td>"
            for m in METRICS
        )
        status = escape(r.get("status"))
        error = ""
        if r.get("status") == "failed" and r.get("error"):  # in full under "Failed pairs"
            short = r["error"] if len(r["error"]) <= 160 else r["error"][:157] + "..."
            error = f'<div class="error" title="{escape(r["error"])}">{escape(short)}</div>'

        cls = "failed" if r.get("status") == "failed" else "outlier" if flagged_by[k] or broken[k] else ""
        names = ", ".join(rule.name for rule in broken[k])
        body.append(
            f'<tr class="{cls}" data-pair="{escape(labels[k])}" data-status="{status}">'
            f'<td data-value="{escape(labels[k])}">{name}</td><td data-value="{status}">{status}</td>'
            f'<td>{thumb}</td>{cells}<td data-value="{escape(names)}" class="rules flag">{escape(names)}</td>'
            f'<td data-value="{escape(", ".join(flagged_by[k]))}" class=flag>'
            f"{escape(', '.join(flagged_by[k]))}</td>"
            f"<td class=legend><code>{escape(os.path.basename(str(r.get('moving'))))}</code> → "
            f"<code>{escape(os.path.basename(str(r.get('fixed'))))}</code>{error}</td></tr>"
        )
    parts.append(
        f'<h2>All pairs</h2><p class="legend">Click a column title to sort. Each pair links to its report.</p>'
        f'<div class="wide"><table class="study" id="pairs"><thead>{head}</thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )
    shown = {k: v for k, v in (settings or {}).items() if _says_something(v)}
    parts.append(
        "<h2>How it was run</h2><table>"
        + _html.rows(
            [(k, escape(json.dumps(v) if isinstance(v, (list, tuple, dict)) else v)) for k, v in shown.items()]
            + [("report drawn by", f"ilex {escape(__version__)}")]
        )
        + "</table>"
    )
    parts.append("<footer>Written by ilex. Self-contained: opens from disk, fetches nothing.</footer>")
    return _html.page(title, "\n".join(parts), _SORT_SCRIPT)


def write_study_report(
    records,
    path: str | os.PathLike,
    *,
    settings: dict | None = None,
    rounds: dict[str, list[float | None]] | str | os.PathLike | None = None,
    title: str = "Study report",
) -> str:
    """Write the study page for `records` (`PairRecord`s or their dicts) to `path`, atomically;
    returns `path`. `rounds` is a template's convergence table (`read_rounds`' dict, or the path
    of its rounds.csv); when given, the page adds the convergence plot."""
    from .._atomic import atomic_file

    path = os.fspath(path)
    if rounds is not None and not isinstance(rounds, dict):
        rounds = read_rounds(rounds)
    records = [r if isinstance(r, dict) else r.to_dict() for r in records]
    text = render_study(records, os.path.dirname(os.path.abspath(path)), settings=settings, rounds=rounds, title=title)
    with atomic_file(path, suffix=".html") as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def read_summary(path: str | os.PathLike) -> tuple[list[dict], dict | None, str]:
    """(records, settings, prefix) of a batch summary: PREFIX.json, or PREFIX.csv beside it.
    Raises `FileProblem` for a file that is not a batch summary."""
    from ..errors import FileProblem

    path = os.fspath(path)
    prefix, ext = os.path.splitext(path)
    json_path = f"{prefix}.json" if ext.lower() == ".csv" else path
    try:
        with open(json_path, encoding="utf-8") as f:
            document = json.load(f)
    except FileNotFoundError:
        raise FileProblem(json_path, "does not exist (ilex batch writes PREFIX.csv and PREFIX.json together)") from None
    except (OSError, ValueError) as e:
        raise FileProblem(json_path, f"not a readable batch summary ({e})") from None
    if not isinstance(document, dict) or not isinstance(document.get("pairs"), list):
        raise FileProblem(json_path, "not a batch summary (no 'pairs' list)")
    return document["pairs"], document.get("settings"), os.path.splitext(json_path)[0]
