"""Fuzz the `-i` reader: random damage to LTA (RAS and voxel), ITK text and ANTs .mat transforms.

Every damaged file must end in a clean `FileProblem` (the CLI's one-line error) or the same
matrix as the undamaged file. Text formats carry no checksum, so a changed digit is simply
another transform; damage is therefore of two kinds:

* anywhere (truncations, byte flips in numbers too): any matrix is acceptable, but nothing
  else than `FileProblem` may be raised;
* structure only (flips away from every number and its neighbours: keywords, '=', ':',
  comments, block headings): the result must be the undamaged matrix or a `FileProblem`.

    python tests/fuzz_initial_affine.py --cases 300 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile

import numpy as np
from scipy.io import savemat

from ilex.errors import FileProblem
from ilex.image.lta import LinearTransform, VolumeGeometry, format_lta
from ilex.registration.affine_init import read_initial_affine

MOVING = np.array([[-1.0, 0, 0, 90], [0, 0, 1.2, -126], [0, -1.1, 0, 72], [0, 0, 0, 1]])
FIXED = np.array([[0.9, 0.1, 0, -80], [-0.1, 0.9, 0, -110], [0, 0, 1.0, -60], [0, 0, 0, 1]])
SHAPES = ((160, 200, 180), (182, 218, 182))
MOV_TO_FIX = np.array([[0.98, 0.05, 0.0, 3.5], [-0.05, 0.98, 0.02, -7.25], [0.0, -0.02, 1.01, 11.0], [0, 0, 0, 1]])
_NUMBER = re.compile(rb"[-+]?[0-9][0-9.eE+-]*")


def _itk_params(fix_to_mov_ras: np.ndarray, centre: np.ndarray) -> tuple[list[float], list[float]]:
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ fix_to_mov_ras @ np.diag([-1.0, -1.0, 1.0, 1.0])
    a = lps[:3, :3]
    t = lps[:3, 3] - centre + a @ centre
    return list(a.ravel()) + list(t), list(centre)


def pristine_files(directory: str) -> dict[str, str]:
    """One file per format, each describing MOV_TO_FIX for the MOVING/FIXED geometry."""
    files = {}
    ras = LinearTransform(1, MOV_TO_FIX)
    src, dst = (
        VolumeGeometry.from_affine(MOVING, SHAPES[0], "mov.nii.gz"),
        VolumeGeometry.from_affine(FIXED, SHAPES[1], "fix.nii.gz"),
    )
    vox = LinearTransform(0, np.linalg.inv(FIXED) @ MOV_TO_FIX @ MOVING, src, dst)
    params, centre = _itk_params(np.linalg.inv(MOV_TO_FIX), np.array([1.5, -20.0, 7.0]))
    itk = (
        "#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
        f"Parameters: {' '.join(str(float(p)) for p in params)}\n"
        f"FixedParameters: {' '.join(str(float(c)) for c in centre)}\n"
    )
    for name, text in (("ras.lta", format_lta(ras)), ("vox.lta", format_lta(vox)), ("itk.txt", itk)):
        files[name] = os.path.join(directory, name)
        with open(files[name], "w") as f:
            f.write(text)
    files["ants.mat"] = os.path.join(directory, "ants.mat")
    savemat(
        files["ants.mat"],
        {"AffineTransform_double_3_3": np.array(params)[:, None], "fixed": np.array(centre)[:, None]},
        format="4",
    )  # as ITK/ANTs write it
    return files


def _structure_positions(raw: bytes) -> np.ndarray:
    mask = np.ones(len(raw), bool)
    for m in _NUMBER.finditer(raw):
        mask[max(m.start() - 1, 0) : m.end() + 1] = False
    return np.flatnonzero(mask)


def _damage(raw: bytes, rng: np.random.Generator, where: np.ndarray | None) -> tuple[bytes, str]:
    if where is None and rng.random() < 0.3:
        cut = int(rng.integers(0, len(raw)))
        return raw[:cut], f"truncate to {cut} of {len(raw)} bytes"
    out = bytearray(raw)
    spots = []
    for _ in range(int(rng.integers(1, 4))):
        pos = int(rng.choice(where)) if where is not None else int(rng.integers(0, len(raw)))
        out[pos] ^= int(rng.integers(1, 256))
        spots.append(pos)
    return bytes(out), f"flip bytes at {spots}"


def _read(path: str) -> tuple[str, np.ndarray | None, str]:
    try:
        return "matrix", read_initial_affine(path, MOVING, FIXED, moving_shape=SHAPES[0], fixed_shape=SHAPES[1]), ""
    except FileProblem as e:
        return "clean error", None, str(e)
    except Exception as e:  # noqa: BLE001 - a fuzzer must catch everything: anything but FileProblem is a finding
        return "other exception", None, f"{e.__class__.__name__}: {e}"


def run(cases: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    results: dict[str, dict[str, int]] = {}
    failures = []
    with tempfile.TemporaryDirectory(prefix="ilex-fuzz-init-") as work:
        files = pristine_files(work)
        for name, path in files.items():
            with open(path, "rb") as f:
                raw = f.read()
            expected = _read(path)
            if expected[0] != "matrix":
                raise RuntimeError(f"the pristine {name} does not read: {expected[2]}")
            structure = None if name.endswith(".mat") else _structure_positions(raw)
            modes = {"anywhere": None} if structure is None else {"anywhere": None, "structure": structure}
            for mode, where in modes.items():
                label = f"{name} ({mode})"
                for case in range(cases):
                    damaged, how = _damage(raw, rng, where)
                    target = os.path.join(work, f"case{os.path.splitext(name)[1]}")
                    with open(target, "wb") as f:
                        f.write(damaged)
                    outcome, matrix, detail = _read(target)
                    if outcome == "matrix":
                        outcome = "same matrix" if np.array_equal(matrix, expected[1]) else "other matrix"
                    counts = results.setdefault(label, {})
                    counts[outcome] = counts.get(outcome, 0) + 1
                    if outcome == "other exception" or (mode == "structure" and outcome == "other matrix"):
                        failures.append(
                            {"target": label, "case": case, "damage": how, "outcome": outcome, "detail": detail}
                        )
    return {"cases_per_target": cases, "seed": seed, "results": results, "failures": failures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    report = run(args.cases, args.seed)
    print(json.dumps(report, indent=2))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
