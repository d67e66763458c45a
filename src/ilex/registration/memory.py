"""Will a registration fit? Estimate its peak memory before running, rather than be killed by the OS.

The peak is set by the U-Net's full-size layers at half the extent, h = E/2, each h^3 x width
floats: on CPU every Winograd layer writes its output over its dying input (slabs.py), so about
one such activation is alive at a time, plus the first encoder output kept for the skip
connection until the first 'add' layer overwrites it, and one slab of transformed tiles. The two
constants were fitted to the peak RSS that `bench/register_speed.py` measured for the whole
`register` pipeline on CPU with the full-width model and the default F(4,3) convolution (2.1,
2.5, 2.6, 3.6 and 5.8 GB at extents 96, 128, 160, 192, 256; README), with a margin; they include
JAX's runtime, the compiled program, both images and the warps. The hypernetwork (3.5 GB) is
released before the network runs and does not add to the peak. XLA's direct convolution
(`--conv direct`) needs more than this estimate says.
"""

from __future__ import annotations

from ..errors import OptionError

_BASE_BYTES = 2.0e9
_BYTES_PER_HALF_VOXEL_CHANNEL = 8.0  # about two float32 activations' worth alive at the peak


# The affine/rigid detector (joint, affine, rigid) runs in slabs like the U-Net (models/conv), each
# encoder level max-pooled as it is computed, so its full-resolution activations never exist: at
# extent 256 the detector alone peaks at 1.25 GB RSS and `register -m affine` at 1.42 GB, under the
# U-Net's peak. `-m joint` still peaked above `-m deform` run beside it, by 0.13 GB at 128
# (2.58 against 2.45 GB) and 0.31 and 0.30 GB at 256 (5.78 against 5.47 GB, 5.74 against 5.45 GB;
# bench/results/*_slab_detector*.json):
# what the pipeline keeps beside the U-Net once the detector has run. A constant covers it with a
# margin. With XLA's direct convolution (`--conv direct`) the detector alone needs 5.1 GB at 256.
_DETECTOR_EXTRA_BYTES = 0.5e9


def runs_detector(method) -> bool:
    """Whether `method` (a name or an abbreviation of one, as `-m` takes it, or a `Method`)
    runs the affine detector."""
    from .methods import method_facts

    try:
        return method_facts(method).runs_detector
    except ValueError:  # not a method at all: nothing runs
        return False


def estimate_peak_bytes(extent: int, width: int = 256, detector: bool = False) -> float:
    """Estimated peak resident memory (bytes) of one registration at `extent` on CPU; with
    `detector`, of one that also runs the affine feature detector (an upper bound for `-m affine`
    and `rigid` too, whose peak is far lower)."""
    need = _BASE_BYTES + _BYTES_PER_HALF_VOXEL_CHANNEL * (extent // 2) ** 3 * width
    return need + _DETECTOR_EXTRA_BYTES if detector else need


def available_bytes() -> float:
    """Memory this process may still use: the smaller of free RAM and what the cgroup (container,
    SLURM job) leaves, plus what its own malloc holds free for its next arrays (ilex's batch and
    template commands keep freed memory: `ilex._allocator`)."""
    import psutil

    from .._allocator import free_heap_bytes

    kept = float(free_heap_bytes())
    available = float(psutil.virtual_memory().available)
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = float(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and float(limit) < 2**60:
            available = min(available, float(limit) - usage)
        break
    return available + kept


def check_memory(extent: int, width: int = 256, available: float | None = None, detector: bool = False) -> float:
    """The estimate in bytes; raises `OptionError` naming a smaller extent to try when it exceeds
    what is available. For CPU runs: GPU memory is managed by JAX's own allocator.
    """
    need = estimate_peak_bytes(extent, width, detector)
    available = available_bytes() if available is None else available
    if need <= available:
        return need
    smaller = [e for e in range(extent - 32, 31, -32) if estimate_peak_bytes(e, width, detector) <= available]
    hint = (
        f"try -e {smaller[0]} (about {estimate_peak_bytes(smaller[0], width, detector) / 1e9:.1f} GB)"
        if smaller
        else "free some memory"
    )
    raise OptionError(
        f"-e {extent}: this registration needs about {need / 1e9:.1f} GB of memory but only {available / 1e9:.1f} GB "
        f"is available; {hint}, or pass --no-memory-check to try anyway"
    )
