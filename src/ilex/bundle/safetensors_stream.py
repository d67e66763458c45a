"""Writing a safetensors file one chunk at a time.

The `safetensors` package can only save tensors that are all in memory at once; the real
weights are 3.5 GB, so the converter writes the documented layout itself (8-byte little-endian
header length, JSON header with dtype/shape/data_offsets, then the raw little-endian data) and
reads back with the `safetensors` package. A SHA-256 of the data section goes into the header's
`__metadata__`, so that the loader can refuse a file whose bytes were damaged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct

import numpy as np

CHECKSUM_KEY = "ilex_data_sha256"


class SafetensorsWriter:
    """Write float32 tensors, declared up front, in order, in as many chunks as the caller likes.

    Use it as a context manager: leaving the block normally calls `close()`; leaving it by an
    exception closes the file without recording a checksum (the caller discards it).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        tensors: list[tuple[str, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ):
        self._names = [n for n, _ in tensors]
        self._sizes = [4 * math.prod(s) for _, s in tensors]
        header, offset = {}, 0
        for (name, shape), size in zip(tensors, self._sizes, strict=False):
            header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        self._total = offset
        # The checksum is filled in at close(); reserve room for it so the header size is fixed.
        meta = dict(metadata or {})
        meta[CHECKSUM_KEY] = "0" * 64
        header["__metadata__"] = meta
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data section 8-byte aligned, as the spec recommends
        self._header = raw
        # The writer owns the file across write() calls; close() and __exit__ close it.
        self._file = open(path, "wb")  # noqa: SIM115 - held by the object, not by one block
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._hash = hashlib.sha256()
        self._index, self._written = 0, 0

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self._file.close()

    def write(self, chunk: np.ndarray) -> None:
        """Append the next chunk (any shape, C order) of the current tensor."""
        data = np.ascontiguousarray(chunk, dtype="<f4").tobytes()
        while data:
            if self._index >= len(self._names):
                raise ValueError("more data than the declared tensors hold")
            room = self._sizes[self._index] - self._written
            part, data = data[:room], data[room:]
            self._file.write(part)
            self._hash.update(part)
            self._written += len(part)
            if self._written == self._sizes[self._index]:
                self._index, self._written = self._index + 1, 0

    def close(self) -> None:
        """Check that every tensor was written in full and record the checksum."""
        # Skip empty tensors that need no write() call.
        while self._index < len(self._sizes) and self._sizes[self._index] == 0:
            self._index += 1
        if self._index != len(self._names):
            self._file.close()
            raise ValueError(f"tensor '{self._names[self._index]}' was not written in full")
        digest = self._hash.hexdigest().encode()
        marker = f'"{CHECKSUM_KEY}":"{"0" * 64}"'.encode()
        pos = self._header.index(marker) + len(marker) - 65
        self._file.seek(8 + pos)
        self._file.write(digest)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def recorded_checksum(path: str | os.PathLike) -> str | None:
    """The data SHA-256 recorded in a safetensors header by `SafetensorsWriter` (None if absent)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    digest = meta.get(CHECKSUM_KEY) if isinstance(meta, dict) else None
    return digest if isinstance(digest, str) else None


def data_checksum(path: str | os.PathLike, block: int = 1 << 24) -> tuple[str | None, str]:
    """(recorded, actual) SHA-256 of the data section of a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        recorded = header.get("__metadata__", {}).get(CHECKSUM_KEY)
        h = hashlib.sha256()
        while chunk := f.read(block):
            h.update(chunk)
    return recorded, h.hexdigest()
