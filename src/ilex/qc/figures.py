"""The report's pictures, drawn with matplotlib (its object API: no pyplot state, safe on the batch's
writer thread) and returned as PNG bytes.

Slice layers: three rows (sagittal, coronal, axial) of the cut slices (`slices.ReportSlices`) on a
black ground, laid out identically for the fixed image and for the moved one, so that the page
can stack them and cross-fade. The moved layer carries the fixed image's edges; the Jacobian
layer colours log2 det J over the fixed image and marks folded voxels.
"""

from __future__ import annotations

import io

import numpy as np

from .slices import VIEWS, ReportSlices

WIDTH_PX = 960
GAP_PX = 2  # black columns between slices of one row (in slice pixels)
LABEL_PX = 16  # room above each row for its name
EDGE_COLOUR = "#ff3030"
FOLD_COLOUR = (1.0, 0.9, 0.0, 1.0)  # folded voxels (det J <= 0): opaque yellow
MASK_COLOUR = "#30d0ff"  # the cost-function mask's outline
JACOBIAN_RANGE = 1.0  # colour scale: log2 det J in [-1, 1], i.e. det J from 0.5 to 2
EDGE_PERCENTILE = 88.0  # a fixed pixel is an edge where its gradient is in the top 12 % of the head's


def _figure(width_px: int, height_px: int, facecolor: str = "black"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / 100, height_px / 100), dpi=100, facecolor=facecolor)
    FigureCanvasAgg(fig)
    return fig


def _png(fig, mode: str = "P", crop_bottom: int = 0) -> bytes:
    """PNG bytes of `fig` (less its bottom `crop_bottom` pixel rows); mode "L" (grey), "P"
    (256-colour palette: a third of RGB's size for these pictures) or "RGB"."""
    from PIL import Image as PILImage

    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    image = PILImage.fromarray(pixels[: pixels.shape[0] - crop_bottom] if crop_bottom else pixels)
    if mode == "L":
        image = image.convert("L")
    elif mode == "P":
        image = image.quantize(256, method=PILImage.Quantize.FASTOCTREE)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _row(stack: np.ndarray, fill=0) -> np.ndarray:
    """(n, h, w) slices side by side, `GAP_PX` columns of `fill` between them."""
    n, h, w = stack.shape
    out = np.full((h, n * w + (n - 1) * GAP_PX), fill, dtype=np.result_type(stack.dtype, type(fill)))
    for k in range(n):
        out[:, k * (w + GAP_PX) : k * (w + GAP_PX) + w] = stack[k]
    return out


def _layout(slices: ReportSlices, width_px: int):
    """Pixel rectangles (left, bottom, width, height) for each view's row and the figure height:
    one scale (pixels per mm) for all rows, so that a millimetre looks the same everywhere."""
    sizes = {}
    for view in VIEWS:
        n, h, w = slices.fixed[view].shape
        row_mm, col_mm = slices.pixel_mm[view]
        sizes[view] = ((n * w + (n - 1) * GAP_PX) * col_mm, h * row_mm)
    scale = min((width_px - 8) / wide for wide, _ in sizes.values())
    heights = {v: round(tall * scale) for v, (_, tall) in sizes.items()}
    height = sum(heights.values()) + LABEL_PX * len(VIEWS) + 4
    rects, top = {}, height
    for view in VIEWS:
        top -= LABEL_PX
        wide = round(sizes[view][0] * scale)
        rects[view] = ((width_px - wide) // 2, top - heights[view], wide, heights[view])
        top -= heights[view]
    return rects, height


def _axes(fig, rect, width_px, height_px, label=None):
    left, bottom, wide, tall = rect
    ax = fig.add_axes((left / width_px, bottom / height_px, wide / width_px, tall / height_px))
    ax.set_axis_off()
    if label:
        ax.text(0, 1.0, label, transform=ax.transAxes, color="#bbbbbb", fontsize=8, va="bottom", ha="left")
    return ax


def _row_labels(slices: ReportSlices, view: str) -> str:
    axis = {"sagittal": "x", "coronal": "y", "axial": "z"}[view]
    cuts = ", ".join(f"{p:.0f}" for p in slices.positions_mm[view])
    return f"{view}  ({axis} = {cuts} mm)"


def edge_strength(image: np.ndarray, head: np.ndarray) -> tuple[np.ndarray, float]:
    """Gradient magnitude of a slice row (Gaussian derivative, σ 1 pixel) and the level above
    which it counts as an edge: the `EDGE_PERCENTILE`th percentile inside the head."""
    from scipy.ndimage import gaussian_gradient_magnitude

    magnitude = gaussian_gradient_magnitude(image.astype(np.float32), sigma=1.0)
    inside = magnitude[head] if head.any() else magnitude.ravel()
    return magnitude, float(np.percentile(inside, EDGE_PERCENTILE)) if inside.size else 1.0


def slice_layers(slices: ReportSlices, width_px: int = WIDTH_PX) -> dict[str, bytes]:
    """PNG bytes of the three layers: "fixed", "moved" (with the fixed image's edges), both with
    the same geometry, and "jacobian" (log2 det J over the fixed image, folds marked, colour bar).

    One figure is drawn three times (making matplotlib axes costs more than drawing them): the
    fixed and moved layers are its top, above the Jacobian's colour bar.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    rects, height = _layout(slices, width_px)
    bar_px = 56
    total = height + bar_px
    fig = _figure(width_px, total)
    axes, images = {}, {}
    for view in VIEWS:
        left, bottom, wide, tall = rects[view]
        ax = _axes(fig, (left, bottom + bar_px, wide, tall), width_px, total, _row_labels(slices, view))
        images[view] = ax.imshow(
            _row(slices.fixed[view]), cmap="gray", vmin=0, vmax=255, aspect="auto", interpolation="antialiased"
        )
        ax.set_xlim(-0.5, _row(slices.fixed[view]).shape[1] - 0.5)
        ax.set_ylim(slices.fixed[view].shape[1] - 0.5, -0.5)
        axes[view] = ax
    out = {"fixed": _png(fig, "L", crop_bottom=bar_px)}
    edges = []
    for view in VIEWS:
        images[view].set_data(_row(slices.moved[view]))
        magnitude, level = edge_strength(_row(slices.fixed[view]), _row(slices.head[view], False))
        edges.append(axes[view].contour(magnitude, levels=[level], colors=EDGE_COLOUR, linewidths=0.6))
        if view in slices.mask:  # where the similarity was measured: its outline
            # The gaps between tiles left out (NaN, masked): filled with either value, the outline would run
            # along every gap beside a tile edge of the other value.
            mask = np.ma.masked_invalid(_row(slices.mask[view].astype(np.float32), np.nan))
            edges.append(axes[view].contour(mask, levels=[0.5], colors=MASK_COLOUR, linewidths=0.8))
    out["moved"] = _png(fig, "P", crop_bottom=bar_px)
    for contour in edges:
        contour.remove()
    cmap = colormaps["RdBu_r"]
    for view in VIEWS:
        images[view].set_data(_row(slices.fixed[view]))
        det = _row(slices.jacobian[view].astype(np.float32), np.nan)
        head = _row(slices.head[view], False)
        with np.errstate(invalid="ignore", divide="ignore"):
            level = np.clip(np.log2(np.where(det > 0, det, 1.0)) / JACOBIAN_RANGE, -1, 1)
        rgba = cmap((level + 1) / 2)
        rgba[..., 3] = np.where(head, 0.65, 0.0)
        rgba[det <= 0] = FOLD_COLOUR
        axes[view].imshow(rgba, aspect="auto", interpolation="nearest")
    cax = fig.add_axes((0.3, 24 / total, 0.4, 10 / total))
    bar = fig.colorbar(
        ScalarMappable(Normalize(-JACOBIAN_RANGE, JACOBIAN_RANGE), cmap), cax=cax, orientation="horizontal"
    )
    ticks = np.linspace(-JACOBIAN_RANGE, JACOBIAN_RANGE, 5)
    bar.set_ticks(ticks, labels=[f"{2**t:.2g}" for t in ticks])
    bar.ax.tick_params(colors="white", labelsize=7)
    bar.outline.set_edgecolor("white")
    fig.text(0.29, 29 / total, "det J: compression", color="white", fontsize=8, ha="right", va="center")
    fig.text(
        0.71, 29 / total, "expansion;  folded (det J ≤ 0): yellow", color="white", fontsize=8, ha="left", va="center"
    )
    out["jacobian"] = _png(fig, "P")
    return out


def thumbnail(slices: ReportSlices, height_px: int = 96) -> bytes:
    """A small picture for the study table: the middle slice of each view (sagittal, coronal,
    axial, side by side at one scale in mm), the moved image with the fixed image's edges, so that
    a misregistration shows in whichever plane it lies."""
    panels = []
    for view in VIEWS:
        stack = slices.moved[view]
        k = stack.shape[0] // 2
        row_mm, col_mm = slices.pixel_mm[view]
        panels.append((view, k, stack.shape[1] * row_mm, stack.shape[2] * col_mm))
    tallest = max(tall for _, _, tall, _ in panels)
    widths = [max(1, round(height_px * wide / tallest)) for _, _, _, wide in panels]
    total = sum(widths) + 2 * (len(panels) - 1)
    fig = _figure(total, height_px)
    left = 0
    for (view, k, tall, _), wide in zip(panels, widths, strict=True):
        high = tall / tallest
        ax = fig.add_axes((left / total, (1 - high) / 2, wide / total, high))
        ax.set_axis_off()
        moved, fixed, head = slices.moved[view][k], slices.fixed[view][k], slices.head[view][k]
        ax.imshow(moved, cmap="gray", vmin=0, vmax=255, aspect="auto", interpolation="antialiased")
        magnitude, level = edge_strength(fixed, head)
        ax.contour(magnitude, levels=[level], colors=EDGE_COLOUR, linewidths=0.4)
        ax.set_xlim(-0.5, fixed.shape[1] - 0.5)
        ax.set_ylim(fixed.shape[0] - 0.5, -0.5)
        left += wide + 2
    return _png(fig, "P")


def strip_plot(
    title: str,
    values: list[float],
    flagged: list[bool],
    labels: list[str],
    unit: str = "",
    width_px: int = 300,
    height_px: int = 240,
) -> bytes:
    """One metric across pairs: a point per pair, jittered sideways (the same jitter every
    time), the median as a line, flagged pairs in red and named."""
    fig = _figure(width_px, height_px, facecolor="white")
    ax = fig.add_axes((0.22, 0.1, 0.74, 0.78))
    values = np.asarray(values, np.float64)
    jitter = np.random.default_rng(0).uniform(-0.25, 0.25, values.size)
    flagged = np.asarray(flagged, bool)
    ax.scatter(jitter[~flagged], values[~flagged], s=14, color="#3b6ea8", alpha=0.7, linewidths=0)
    ax.scatter(jitter[flagged], values[flagged], s=22, color="#d62728", linewidths=0)
    for x, y, name, flag in zip(jitter, values, labels, flagged, strict=False):
        if flag:
            # A pair's name is the user's text: drawn as typed, never read as mathtext ("sub-$x_$" would
            # not parse) or TeX, whatever the user's matplotlibrc says.
            ax.annotate(
                name,
                (x, y),
                xytext=(4, 0),
                textcoords="offset points",
                fontsize=7,
                color="#d62728",
                va="center",
                parse_math=False,
                usetex=False,
            )
    if values.size:
        ax.axhline(np.median(values), color="#888888", linewidth=0.8, linestyle="--")
    ax.set_xlim(-0.6, 0.9)
    ax.set_xticks([])
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(unit, fontsize=8)
    ax.tick_params(labelsize=7)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    return _png(fig, "P")


def convergence_plot(rounds: dict[str, list[float | None]], width_px: int = 720, height_px: int = 260) -> bytes:
    """Round-by-round convergence of a template: displacement (mean, max; mm), mean similarity
    and the template's change, each against the round; a None (not measured) leaves a gap."""
    fig = _figure(width_px, height_px, facecolor="white")
    x = rounds["round"]
    panels = (
        ("displacement (mm)", ("mean_displacement_mm", "max_displacement_mm")),
        ("mean similarity", ("mean_similarity",)),
        ("template change", ("template_change",)),
    )
    for k, (title, columns) in enumerate(panels):
        ax = fig.add_axes((0.07 + k * 0.325, 0.17, 0.25, 0.7))
        for column in columns:
            y = [np.nan if v is None else v for v in rounds[column]]
            ax.plot(x, y, marker="o", markersize=3, linewidth=1.2, label=column.replace("_", " "))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(columns) > 1:
            ax.legend(fontsize=7, frameon=False)
    return _png(fig, "P")
