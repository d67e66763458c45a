"""Damaged weight files give clean errors only: no crash, no hang, no silently wrong model.

Runs `tests/fuzz_loaders.py` in a child process, so that a crash of the interpreter (a segfault
in a native reader) fails this test instead of killing the suite.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # the full pipeline or many processes: CI runs it, `-m "not slow"` skips it

FUZZ = os.path.join(os.path.dirname(__file__), "fuzz_loaders.py")


def test_fuzzed_loaders_fail_cleanly():
    proc = subprocess.run(
        [sys.executable, FUZZ, "--cases", "150", "--seed", "7"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode in (0, 1), f"the loader process died (status {proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout)
    assert report["failures"] == [], report["failures"]
    results = report["results"]
    for target in ("h5 (expected_sha256)", "bundle model.safetensors", "bundle config.json"):
        assert sum(results[target].values()) == 150
        assert set(results[target]) <= {"clean error", "identical model"}, (target, results[target])
    # Most damage must be caught as damage, not merely survive.
    assert results["bundle model.safetensors"].get("clean error", 0) >= 140
    assert results["h5 (expected_sha256)"] == {"clean error": 150}
