"""Will a registration fit? Estimate its peak memory before running, rather than be killed by the OS.

The peak is set by the U-Net's widest full-resolution layers: at half the extent, h = E/2, the
first encoder output (kept for the skip connection) and two 'add' layer activations of
`width` channels are alive at once, plus the Winograd slab buffers. The constants below were
fitted to the peak RSS that `bench/register_speed.py` measured for the whole `register`
pipeline (see the README's benchmark table); they include JAX's runtime, both images and the
full-resolution warps.
"""

from __future__ import annotations

import os

from ..errors import OptionError

_BASE_BYTES = 1.3e9  # JAX runtime, compiled code, images, weights of a fixed-λ U-Net
_BYTES_PER_HALF_VOXEL_CHANNEL = 4 * 3.4  # float32 x the number of full-size activations alive at the peak
_HYPERNET_BYTES = 3.6e9  # the 877 M hypernetwork parameters when loading the full model


def estimate_peak_bytes(extent: int, width: int = 256, hypernetwork: bool = False) -> float:
    """Estimated peak resident memory (bytes) of one registration at `extent` on CPU."""
    half = extent // 2
    return _BASE_BYTES + _BYTES_PER_HALF_VOXEL_CHANNEL * half**3 * width + (_HYPERNET_BYTES if hypernetwork else 0.0)


def available_bytes() -> float:
    """Memory this process may still use: the smaller of free RAM and what the cgroup (container,
    SLURM job) leaves."""
    import psutil

    available = float(psutil.virtual_memory().available)
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
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
    return available


def check_memory(extent: int, width: int = 256, hypernetwork: bool = False, available: float | None = None) -> float:
    """Raise `OptionError` with a smaller extent to try when the estimate exceeds what is available.

    Returns the estimate in bytes. Only meaningful on CPU: GPU memory is managed by JAX's allocator.
    """
    need = estimate_peak_bytes(extent, width, hypernetwork)
    available = available_bytes() if available is None else available
    if need <= available:
        return need
    smaller = [e for e in range(extent - 32, 31, -32) if estimate_peak_bytes(e, width, hypernetwork) <= available]
    hint = f"try -e {smaller[0]} (about {estimate_peak_bytes(smaller[0], width, hypernetwork) / 1e9:.1f} GB)" if smaller else "free some memory"
    if hypernetwork:
        hint += ", or convert the weights once for your λ (`ilex convert --hyper`) to save 3.5 GB"
    raise OptionError(
        f"-e {extent}: this registration needs about {need / 1e9:.1f} GB of memory but only {available / 1e9:.1f} GB "
        f"is available; {hint}; or pass --no-memory-check to try anyway"
    )


def cpu_only() -> bool:
    import jax

    return jax.default_backend() == "cpu" and not os.environ.get("ILEX_NO_MEMORY_CHECK")
