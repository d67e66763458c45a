"""Real brain MRI for the tests, fetched from Debian and PyPI (never vendored).

    python -m tests.data --fetch      # what CI runs before the tests

Everything lands in tests/.data/ (git-ignored). The packages are pinned to one version each and
every extracted file is checked against its SHA-256, so the tests always see the same bytes.
Tests ask for a file with `data_path(name)` and carry the `realdata` marker; without the file
the test skips with the reason, or fails when `ILEX_REQUIRE_DATA=1` (as CI sets it, so that CI
cannot pass by skipping). The human images are under the MNI/McGill notice: "Permission to
use, copy, modify, and distribute this software and its documentation for any purpose and without
fee is hereby granted, provided that the above copyright notice appear in all copies." The INIA19
rhesus macaque template and its NeuroMaps label map (Rohlfing et al. 2012, Front. Neuroinform.
6:27, https://www.nitrc.org/projects/inia19/) are under CC BY, as their NIfTI headers say; Debian
ships them in main, in mricron-data.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".data")

# Pinned sources: Debian package version, or PyPI wheel version.
VERSIONS = {
    "deb:mricron-data": "1.2.20211006+dfsg-4",
    "wheel:nilearn": "0.14.1",
    "wheel:nimare": "0.22.1",
    "wheel:spm-runtime": "25.1.2.post4",
}

# name -> (source, member inside it, SHA-256 of the extracted file)
FILES = {
    "colin27_t1.nii.gz": (
        "deb:mricron-data",
        "usr/share/mricron/templates/ch2.nii.gz",
        "a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309",
    ),
    "colin27_aal.nii.gz": (
        "deb:mricron-data",
        "usr/share/mricron/templates/aal.nii.gz",
        "b512dcd3f36b77f56be7a9a038134096e66314b7e8c31d25875b96bcf6991454",
    ),
    # The INIA19 rhesus macaque brain (skull-stripped T1 template, 19 animals) at its native 0.5 mm
    # (168 x 206 x 128), and the NeuroMaps atlas on the same grid: 724 labels, half of them under
    # 100 voxels (12.5 mm3).
    "inia19_t1_brain.nii.gz": (
        "deb:mricron-data",
        "usr/share/mricron/templates/inia19-t1-brain.nii.gz",
        "3f0707f4999a0c6b56d6c9a0145310cba17753e2b4612f577d8dbfe65a89e231",
    ),
    "inia19_neuromaps.nii.gz": (
        "deb:mricron-data",
        "usr/share/mricron/templates/inia19-NeuroMaps.nii.gz",
        "5e3019d073aedc6cabfeed107b049959fe8398a8ab6b0218d8ac050c311aaf79",
    ),
    "mni2009a_t1.nii.gz": (
        "wheel:nilearn",
        "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
    ),
    "fsl_mni152_t1_2mm.nii.gz": (
        "wheel:nimare",
        "nimare/resources/templates/tpl-MNI152NLin6Asym_res-02_T1w.nii.gz",
        "1616e98b88c0b213096e015d12f7a114648851989215493ba5799c76c19fd1f5",
    ),
    "spm_avg152t1.nii": (
        "wheel:spm-runtime",
        "ctf:fsroot/_spm/cleaned/spm/canonical/avg152T1.nii",
        "213557a43d4387243c51bf208b3a672ae2eb68091f7ffe47c28a9f69d9e3d9fd",
    ),
    "spm_avg152t2.nii": (
        "wheel:spm-runtime",
        "ctf:fsroot/_spm/cleaned/spm/canonical/avg152T2.nii",
        "6466e5f99fbfd73ee0da5a34bf6c6ade22eea4399bcb9bb002ab5831d925e877",
    ),
    # Tissue maps: SPM's old segmentation priors on the avg152 grid (probabilities in [0, 1], stored
    # as 0-255 with a 1/255 scale) and MNI 2009a's grey and white matter maps (0-255, no scale:
    # divide by 255 for a probability).
    "spm_grey.nii": (
        "wheel:spm-runtime",
        "ctf:fsroot/_spm/cleaned/spm/toolbox/OldSeg/grey.nii",
        "c4889206b4ffae9366926d9a631cb635e94151a8d2c7a105002ee0e8ceb91d06",
    ),
    "spm_white.nii": (
        "wheel:spm-runtime",
        "ctf:fsroot/_spm/cleaned/spm/toolbox/OldSeg/white.nii",
        "6b3208332f51c78c57137e7721c2596972feb7ce43affe4a4c3404cbd9c54481",
    ),
    "mni2009a_gm.nii.gz": (
        "wheel:nilearn",
        "nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
        "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed",
    ),
    "mni2009a_wm.nii.gz": (
        "wheel:nilearn",
        "nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
        "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db",
    ),
}


def data_path(name: str) -> str:
    """Path of a fetched test image; skips the calling test if it was not fetched (fails under
    `ILEX_REQUIRE_DATA=1`)."""
    path = os.path.join(DATA, name)
    if not os.path.exists(path):
        import pytest

        reason = f"test image {name} not fetched (run `python -m tests.data --fetch`)"
        if os.environ.get("ILEX_REQUIRE_DATA") == "1":
            pytest.fail(f"{reason}; ILEX_REQUIRE_DATA=1 forbids skipping")
        pytest.skip(reason)
    return path


class ChecksumError(ValueError):
    """An extracted test file whose bytes are not the pinned ones."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _store(name: str, data: bytes, dest: str) -> None:
    expected = FILES[name][2]
    if _sha256(data) != expected:
        raise ChecksumError(
            f"{name}: SHA-256 {_sha256(data)} is not the pinned {expected} (from {FILES[name][0]} "
            f"{VERSIONS[FILES[name][0]]})"
        )
    with open(os.path.join(dest, name), "wb") as f:
        f.write(data)


def _fetch_deb(package: str, version: str, tmp: str) -> str:
    subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=tmp, check=True, capture_output=True)
    deb = glob.glob(os.path.join(tmp, f"{package}_*.deb"))[0]
    out = os.path.join(tmp, "deb")
    subprocess.run(["dpkg-deb", "-x", deb, out], check=True)
    return out


def _fetch_wheel(package: str, version: str, tmp: str) -> str:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "-q",
            "-d",
            tmp,
            f"{package}=={version}",
        ],
        check=True,
        capture_output=True,
    )
    return glob.glob(os.path.join(tmp, "*.whl"))[0]


def fetch(dest: str = DATA) -> list[str]:
    """Fetch every missing file into `dest`; the names that could not be fetched or verified."""
    os.makedirs(dest, exist_ok=True)
    failed = []
    sources = sorted({src for src, _, _ in FILES.values()})
    for source in sources:
        wanted = {n: m for n, (s, m, _) in FILES.items() if s == source and not os.path.exists(os.path.join(dest, n))}
        if not wanted:
            continue
        kind, package = source.split(":")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                if kind == "deb":
                    root = _fetch_deb(package, VERSIONS[source], tmp)
                    for name, member in wanted.items():
                        with open(os.path.join(root, member), "rb") as f:
                            _store(name, f.read(), dest)
                else:
                    with zipfile.ZipFile(_fetch_wheel(package, VERSIONS[source], tmp)) as whl:
                        for name, member in wanted.items():
                            if member.startswith("ctf:"):
                                # SPM's runtime keeps its files in a zip archive inside the wheel.
                                ctf = next(n for n in whl.namelist() if n.endswith("_spm.ctf"))
                                with zipfile.ZipFile(io.BytesIO(whl.read(ctf))) as inner:
                                    data = inner.read(member[4:])
                            else:
                                data = whl.read(member)
                            _store(name, data, dest)
            except (
                subprocess.CalledProcessError,
                OSError,
                KeyError,
                IndexError,
                StopIteration,
                zipfile.BadZipFile,
                ChecksumError,
            ) as e:
                print(f"could not fetch {sorted(wanted)} from {source} {VERSIONS[source]}: {e}", file=sys.stderr)
                failed += list(wanted)
    return failed


def verify(dest: str = DATA) -> list[str]:
    """Files present in `dest` whose SHA-256 is not the pinned one (a stale or damaged fetch)."""
    bad = []
    for name, (_, _, expected) in FILES.items():
        path = os.path.join(dest, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                if _sha256(f.read()) != expected:
                    bad.append(name)
    return bad


if __name__ == "__main__":
    if "--fetch" in sys.argv:
        missing = fetch()
        damaged = verify()
        for name in damaged:
            print(f"{name}: SHA-256 differs from the pinned one; delete it and fetch again", file=sys.stderr)
        print(f"test data in {DATA}: {sorted(os.listdir(DATA))}")
        sys.exit(1 if missing or damaged else 0)
    print(__doc__)
