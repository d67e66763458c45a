"""Fuzz the weight loaders: random truncations and byte flips of an h5, a model.safetensors and a config.json.

Every damaged file must end in one of two ways: a clean `IlexError` (the one-line errors of the
CLI), or a model identical to the undamaged one (the flip hit bytes that carry no meaning, such
as a description string). Anything else is a failure: another exception type, a case that runs
longer than its alarm, a crash of the interpreter (the parent sees a signal exit status), or a
model that loaded with different numbers ("silently wrong").

Keras h5 files carry no checksum, so a flip inside an array's data is undetectable without a
known digest. Such files are loaded twice: as an unknown file (silently wrong loads are counted
and reported, the documented limitation) and with `expected_sha256` (every one must be caught;
FreeSurfer's own release is checked this way automatically, by its size).

    python tests/fuzz_loaders.py --cases 200 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time

import h5py
import jax
import numpy as np

import ilex
from ilex.convert.releases import file_sha256
from ilex.errors import IlexError

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_H5 = os.path.join(HERE, "fixtures", "net_e32_uniform.h5")
CASE_SECONDS = 30


class _Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Hang


def _h5_data_ranges(path: str) -> list[tuple[int, int]]:
    ranges = []

    def visit(_, obj):
        if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
            ranges.append((obj.id.get_offset(), obj.id.get_offset() + obj.id.get_storage_size()))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return ranges


def _safetensors_data_ranges(path: str) -> list[tuple[int, int]]:
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
    return [(8 + header, os.path.getsize(path))]


def _metadata_positions(size: int, data: list[tuple[int, int]]) -> np.ndarray:
    mask = np.ones(size, bool)
    for start, stop in data:
        mask[start:stop] = False
    return np.flatnonzero(mask)


def _damage(raw: bytes, rng: np.random.Generator, meta: np.ndarray) -> tuple[bytes, str]:
    """A random truncation, or 1-4 byte flips (half of them aimed at non-data bytes, where parsers work)."""
    if rng.random() < 0.3:
        cut = int(rng.integers(0, len(raw)))
        return raw[:cut], f"truncate to {cut} of {len(raw)} bytes"
    out = bytearray(raw)
    where = []
    for _ in range(int(rng.integers(1, 5))):
        pos = int(rng.choice(meta)) if rng.random() < 0.5 and meta.size else int(rng.integers(0, len(raw)))
        out[pos] ^= int(rng.integers(1, 256))
        where.append(pos)
    return bytes(out), f"flip bytes at {where}"


def _leaves(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(model)]


def _same(model, reference) -> bool:
    a, b = _leaves(model), _leaves(reference)
    return (
        type(model) is type(reference)
        and model.constructor_kwargs == reference.constructor_kwargs
        and len(a) == len(b)
        and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b, strict=False))
    )


def _outcome(load, reference) -> tuple[str, str]:
    signal.alarm(CASE_SECONDS)
    try:
        model = load()
    except IlexError as e:
        return "clean error", str(e).splitlines()[0] if str(e) else ""
    except _Hang:
        return "hang", f"no answer within {CASE_SECONDS} s"
    except Exception as e:  # noqa: BLE001 - a fuzzer must catch everything: anything but a clean error is a finding
        return "other exception", f"{e.__class__.__name__}: {e}"
    finally:
        signal.alarm(0)
    return ("identical model", "") if _same(model, reference) else ("silently wrong", "loaded with different weights")


def run(cases: int, seed: int, verbose: bool = False) -> dict:
    signal.signal(signal.SIGALRM, _on_alarm)
    rng = np.random.default_rng(seed)
    work = tempfile.mkdtemp(prefix="ilex-fuzz-")
    try:
        reference = ilex.load(SOURCE_H5)
        bundle = os.path.join(work, "pristine")
        ilex.save(reference, bundle)
        h5_digest = file_sha256(SOURCE_H5)
        targets = {
            "h5": (SOURCE_H5, _h5_data_ranges(SOURCE_H5)),
            "model.safetensors": (
                os.path.join(bundle, "model.safetensors"),
                _safetensors_data_ranges(os.path.join(bundle, "model.safetensors")),
            ),
            "config.json": (os.path.join(bundle, "config.json"), []),
        }
        results: dict[str, dict[str, int]] = {}
        failures = []
        start = time.perf_counter()
        for kind, (path, data_ranges) in targets.items():
            raw = pathlib.Path(path).read_bytes()
            meta = _metadata_positions(len(raw), data_ranges)
            for case in range(cases):
                damaged, how = _damage(raw, rng, meta)
                case_dir = os.path.join(work, f"{kind}-{case}")
                if kind == "h5":
                    os.makedirs(case_dir)
                    target = os.path.join(case_dir, "weights.h5")
                    pathlib.Path(target).write_bytes(damaged)
                    loads = {
                        "h5 (unknown file)": lambda t=target: ilex.load(t),
                        "h5 (expected_sha256)": lambda t=target: ilex.load(t, expected_sha256=h5_digest),
                    }
                else:
                    shutil.copytree(bundle, case_dir)
                    pathlib.Path(case_dir, kind).write_bytes(damaged)
                    loads = {f"bundle {kind}": lambda d=case_dir: ilex.load(d)}
                for label, load in loads.items():
                    if verbose:
                        print(f"{label} #{case}: {how}", flush=True)
                    outcome, detail = _outcome(load, reference)
                    results.setdefault(label, {}).setdefault(outcome, 0)
                    results[label][outcome] += 1
                    bad = outcome in ("hang", "other exception") or (
                        outcome == "silently wrong" and label != "h5 (unknown file)"
                    )
                    if bad:
                        failures.append(
                            {"target": label, "case": case, "damage": how, "outcome": outcome, "detail": detail}
                        )
                shutil.rmtree(case_dir)
        return {
            "cases_per_target": cases,
            "seed": seed,
            "seconds": round(time.perf_counter() - start, 1),
            "results": results,
            "failures": failures,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200, help="damaged copies per file (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="print each case before running it (to find a crash)")
    args = parser.parse_args()
    report = run(args.cases, args.seed, args.verbose)
    print(json.dumps(report, indent=2))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
