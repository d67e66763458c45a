"""The batch's summary: PREFIX.csv and PREFIX.json, one row per pair."""

from __future__ import annotations

import csv
import json
import os

from .._atomic import atomic_file
from .records import STATUSES, PairRecord
from .settings import BatchSettings


def write_summary(
    records: list[PairRecord], prefix: str | os.PathLike, settings: BatchSettings | None = None
) -> tuple[str, str]:
    """Write PREFIX.csv and PREFIX.json (atomically); returns both paths.

    CSV columns: `PairRecord`'s fields but its outputs (pair, index, moving, fixed, status, seconds,
    peak_memory_gib, folding_percent, error, worker, started, finished, note). The JSON holds the
    same records (with their outputs), the totals per status and the settings.
    """
    prefix = os.fspath(prefix)
    columns = [c for c in PairRecord.__dataclass_fields__ if c != "outputs"]
    csv_path, json_path = f"{prefix}.csv", f"{prefix}.json"
    with atomic_file(csv_path, suffix=".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow(
                {
                    k: ("" if v is None else round(v, 4) if isinstance(v, float) else v)
                    for k, v in record.to_dict().items()
                }
            )
    totals = {status: sum(r.status == status for r in records) for status in STATUSES}
    document = {
        "totals": totals,
        "settings": settings.as_record() if settings else None,
        "pairs": [r.to_dict() for r in records],
    }
    with atomic_file(json_path, suffix=".json") as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
    return csv_path, json_path
