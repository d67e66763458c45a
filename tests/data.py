"""Real brain MRI for the tests, fetched from Debian and PyPI (never vendored).

    python -m tests.data --fetch      # what CI runs before the tests

Everything lands in tests/.data/ (git-ignored). Tests ask for a file with `data_path(name)`,
which skips the test with the reason when the file is absent. All images here are under the
MNI/McGill notice: "Permission to use, copy, modify, and distribute this software and its
documentation for any purpose and without fee is hereby granted, provided that the above
copyright notice appear in all copies."
"""

from __future__ import annotations

import glob
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".data")

# name -> (source, member inside it)
FILES = {
    "colin27_t1.nii.gz": ("deb:mricron-data", "usr/share/mricron/templates/ch2.nii.gz"),
    "colin27_aal.nii.gz": ("deb:mricron-data", "usr/share/mricron/templates/aal.nii.gz"),
    "mni2009a_t1.nii.gz": ("wheel:nilearn", "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"),
    "fsl_mni152_t1_2mm.nii.gz": ("wheel:nimare", "nimare/resources/templates/tpl-MNI152NLin6Asym_res-02_T1w.nii.gz"),
    "spm_avg152t1.nii": ("wheel:spm-runtime", "ctf:fsroot/_spm/cleaned/spm/canonical/avg152T1.nii"),
    "spm_avg152t2.nii": ("wheel:spm-runtime", "ctf:fsroot/_spm/cleaned/spm/canonical/avg152T2.nii"),
    # Tissue probability maps on the avg152 grid (SPM's old segmentation priors) and on MNI 2009a.
    "spm_grey.nii": ("wheel:spm-runtime", "ctf:fsroot/_spm/cleaned/spm/toolbox/OldSeg/grey.nii"),
    "spm_white.nii": ("wheel:spm-runtime", "ctf:fsroot/_spm/cleaned/spm/toolbox/OldSeg/white.nii"),
    "mni2009a_gm.nii.gz": ("wheel:nilearn", "nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"),
    "mni2009a_wm.nii.gz": ("wheel:nilearn", "nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"),
}


def data_path(name: str) -> str:
    """Path of a fetched test image; skips the calling test if it was not fetched."""
    path = os.path.join(DATA, name)
    if not os.path.exists(path):
        import pytest

        pytest.skip(f"test image {name} not fetched (run `python -m tests.data --fetch`)")
    return path


def _fetch_deb(package: str, tmp: str) -> str:
    subprocess.run(["apt-get", "download", package], cwd=tmp, check=True, capture_output=True)
    deb = glob.glob(os.path.join(tmp, f"{package}_*.deb"))[0]
    out = os.path.join(tmp, "deb")
    subprocess.run(["dpkg-deb", "-x", deb, out], check=True)
    return out


def _fetch_wheel(package: str, tmp: str) -> str:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, package], check=True, capture_output=True)
    return glob.glob(os.path.join(tmp, "*.whl"))[0]


def fetch() -> list[str]:
    os.makedirs(DATA, exist_ok=True)
    failed = []
    sources = sorted({src for src, _ in FILES.values()})
    for source in sources:
        wanted = {n: m for n, (s, m) in FILES.items() if s == source and not os.path.exists(os.path.join(DATA, n))}
        if not wanted:
            continue
        kind, package = source.split(":")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                if kind == "deb":
                    root = _fetch_deb(package, tmp)
                    for name, member in wanted.items():
                        shutil.copy(os.path.join(root, member), os.path.join(DATA, name))
                else:
                    with zipfile.ZipFile(_fetch_wheel(package, tmp)) as whl:
                        for name, member in wanted.items():
                            if member.startswith("ctf:"):
                                # SPM's runtime keeps its files in a zip archive inside the wheel.
                                ctf = next(n for n in whl.namelist() if n.endswith("_spm.ctf"))
                                with zipfile.ZipFile(io.BytesIO(whl.read(ctf))) as inner:
                                    data = inner.read(member[4:])
                            else:
                                data = whl.read(member)
                            with open(os.path.join(DATA, name), "wb") as f:
                                f.write(data)
            except (subprocess.CalledProcessError, OSError, KeyError, IndexError, StopIteration, zipfile.BadZipFile) as e:
                print(f"could not fetch {sorted(wanted)} from {source}: {e}", file=sys.stderr)
                failed += list(wanted)
    return failed


if __name__ == "__main__":
    if "--fetch" in sys.argv:
        missing = fetch()
        print(f"test data in {DATA}: {sorted(os.listdir(DATA))}")
        sys.exit(1 if missing else 0)
    print(__doc__)
