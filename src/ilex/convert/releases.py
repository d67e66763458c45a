"""FreeSurfer's released SynthMorph weight files, recognised by size and checked by SHA-256.

Keras h5 files carry no checksum of their own: a flipped bit in a 3.5 GB download would load as a
slightly wrong network. For the releases ilex knows (size and digest from FreeSurfer's git-annex
index), the digest is checked; any other file can be checked against `expected_sha256`.
"""

from __future__ import annotations

import hashlib
import os

from ..errors import WeightsFileError

# size in bytes -> (file name, SHA-256)
KNOWN_RELEASES = {
    3_508_630_424: ("synthmorph.deform.3.h5", "95b367cd30788cc647e4704b650642fc1d70d7e419c20c04f1ba1b2902bc6536"),
    51_455_312: ("synthmorph.affine.2.h5", "1ac5304b683036e5177f5b4ad38fa09fcbbe7883e742d6fa5bdaedd0e619ced6"),
    51_656_152: ("synthmorph.rigid.1.h5", "284c145fce47e98ecf3fdeda2163f646ac3ebb0240e87dd50d71d879f4d5b3af"),
}


def release_name(path: str | os.PathLike) -> str | None:
    """The FreeSurfer release a file's size identifies (unverified), or None."""
    return KNOWN_RELEASES.get(os.path.getsize(path), (None, None))[0]


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def verify_release(path: str | os.PathLike, expected_sha256: str | None = None) -> str | None:
    """Check `path` against `expected_sha256`, or against the known release of its size.

    Returns the digest when one was computed, else None (an unknown file with nothing to check).
    Raises `WeightsFileError` on a mismatch.
    """
    path = os.fspath(path)
    name, known = KNOWN_RELEASES.get(os.path.getsize(path), (None, None))
    expected = (expected_sha256 or known or "").lower() or None
    if expected is None:
        return None
    actual = file_sha256(path)
    if actual != expected:
        what = f"FreeSurfer's {name}" if expected == known else "the expected file"
        raise WeightsFileError(
            path,
            f"SHA-256 {actual[:16]}… differs from {what} ({expected[:16]}…): the file is damaged or altered; "
            "download it again",
        )
    return actual
