"""What the pair and study pages share: the page shell, its stylesheet, inline images, number formats.

Pages are one file each: images are data URIs, styles inline, nothing is fetched. The
before/after panel is two stacked images and CSS, the technique of fMRIPrep's reportlets: at rest
the top layer, the moved image with the fixed image's edges, so that a screenshot, a print or a
thumbnail shows what the registration did; hover, keyboard focus or a checkbox fades it out to
show the fixed image beneath; "one above the other" or printing shows both.
"""

from __future__ import annotations

import base64
import html
import math

STYLE = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1000px;
       padding: 12px 20px 40px; color: #1d1d1f; background: #fff; }
h1 { font-size: 20px; margin: 8px 0 2px; } h2 { font-size: 16px; margin: 26px 0 6px; border-bottom: 1px solid #ddd; }
.sub { color: #555; margin: 0 0 10px; word-break: break-all; }
table { border-collapse: collapse; margin: 6px 0; }
td, th { padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
th { font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { padding: 8px 12px; border-radius: 6px; margin: 10px 0; }
.verdict.ok { background: #e8f5e9; border: 1px solid #a5d6a7; }
.verdict.warn { background: #fff4e5; border: 1px solid #ffb74d; }
.verdict.bad { background: #fdecea; border: 1px solid #ef9a9a; }
.verdict ul { margin: 4px 0 0 18px; padding: 0; }
.flag { color: #b71c1c; font-weight: 600; }
table.rules { font-size: 13px; }
table.rules td, table.rules th { border-bottom: 1px solid #eee; padding: 3px 8px 3px 0; }
.flagged-list li { margin: 2px 0; }
.panel { margin: 6px 0; }
.controls { font-size: 13px; color: #333; margin: 4px 0; user-select: none; }
.controls label { margin-right: 16px; cursor: pointer; }
.fade { position: relative; display: inline-block; line-height: 0; outline: none; background: #000; max-width: 100%; }
.fade img { display: block; max-width: 100%; height: auto; }
.fade img.over { position: absolute; top: 0; left: 0; width: 100%; opacity: 1; transition: opacity .2s ease-in-out; }
.fade:hover img.over, .fade:focus img.over, #pin:checked ~ .fade img.over { opacity: 0; }
#sidebyside:checked ~ .fade img.over { position: static; opacity: 1; margin-top: 4px; }
@media print { .fade img.over { position: static; opacity: 1; margin-top: 4px; } .controls { display: none; } }
.legend { font-size: 12px; color: #444; }
.swatch { display: inline-block; width: 10px; height: 10px; margin: 0 3px 0 8px; vertical-align: -1px; }
img.plot { max-width: 100%; height: auto; }
.strips { display: flex; flex-wrap: wrap; gap: 6px; }
.wide { overflow-x: auto; }
.study { font-size: 13px; } .study th { font-size: 12px; }
.study td, .study th { border-bottom: 1px solid #eee; padding: 4px 6px; }
.study th[data-sort] { cursor: pointer; }
.study th[data-sort]::after { content: " \\2195"; color: #999; font-weight: 400; }
.study tr.failed { background: #fdecea; } .study tr.outlier { background: #fff4e5; }
.study img.thumb { height: 64px; width: auto; display: block; }
.study td.legend { min-width: 10em; max-width: 18em; word-break: break-all; }
.error { color: #b71c1c; font-family: ui-monospace, monospace; font-size: 12px; word-break: break-word; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
footer { margin-top: 30px; color: #777; font-size: 12px; }
"""


def escape(value) -> str:
    return html.escape(str(value), quote=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def number(value, digits: int = 3) -> str:
    """A number for a table cell: `digits` significant digits, '–' when missing or not finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"
    return escape(value)


def page(title: str, body: str, script: str = "") -> str:
    """A whole HTML document: `body` is trusted markup, `title` plain text."""
    tail = f"<script>{script}</script>\n" if script else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # No network: nothing but inline styles, data: images and the page's own script.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n"
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n{tail}</body>\n</html>\n"
    )


def rows(pairs) -> str:
    """Table rows from (label, value markup) pairs."""
    return "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in pairs)
