"""The run's step log (`log.csv`) and what it prints: a bar on a terminal, a line every N steps off one."""

from __future__ import annotations

import csv
import os
import sys

import jax

from ..progress import peak_rss_gib

__all__ = ["LOG_COLUMNS", "StepLog", "memory_in_use"]

LOG_COLUMNS = ("step", "loss", "data", "smoothness", "lambda", "seconds", "memory")


def memory_in_use() -> int:
    """Bytes: the accelerator's peak in use where it reports one, else the process's peak resident memory."""
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001  CPU devices have none
        stats = None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return round(peak_rss_gib() * 2**30)


class StepLog:
    """Appends one row per step to `log.csv`; on resume, rows after the checkpoint are dropped first."""

    def __init__(self, run_dir: str, *, start_step: int, total: int, every: int, show: bool = True):
        self.path = os.path.join(run_dir, "log.csv")
        self._keep_rows_up_to(start_step)
        new = not os.path.exists(self.path)
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115  closed in close()
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(LOG_COLUMNS)
        self.every, self.total = every, total
        self.bar = None
        if show and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start_step, unit="step", desc="ilex train", dynamic_ncols=True)
        self.show = show

    def _keep_rows_up_to(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step] if rows else []
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(kept)
        os.replace(tmp, self.path)

    def write(self, step: int, loss: float, data: float, smooth: float, hyper: float, seconds: float) -> None:
        memory = memory_in_use()
        self._writer.writerow(
            [step, f"{loss:.6g}", f"{data:.6g}", f"{smooth:.6g}", f"{hyper:.4f}", f"{seconds:.4f}", memory]
        )
        self._file.flush()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"loss {loss:.4g}", refresh=False)
        elif self.show and (step % self.every == 0 or step == self.total):
            print(
                f"ilex train: step {step}/{self.total} loss {loss:.4g} (data {data:.4g}, smoothness {smooth:.4g}) "
                f"{seconds:.2f} s/step, {memory / 2**30:.2f} GiB",
                file=sys.stderr,
                flush=True,
            )

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        elif self.show:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self._file.close()
