"""Reading IDX files (MNIST's format), plain or gzipped, with clear errors naming the file."""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

__all__ = ["IdxError", "gunzip", "read_idx", "parse_idx", "idx_bytes"]

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
           0x0E: np.dtype(">f8")}


class IdxError(ValueError):
    """A file that is not a valid IDX file (or not a valid gzip of one)."""


def gunzip(raw: bytes, where: str) -> bytes:
    """``raw`` gunzipped if it is gzip, else as is; a corrupt gzip raises :class:`IdxError` naming ``where``."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise IdxError(f"{where}: corrupt or truncated gzip ({e}); fetch the file again") from e


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes to an array: uint8 images are ``(N, H, W)``, labels ``(N,)``."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise IdxError(f"{name}: not an IDX file (bad magic number {data[:4].hex() or 'empty'}); "
                       "expected 0x0000 then a type byte and a rank byte")
    dtype, ndim = np.dtype(_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(f"{name}: truncated IDX header ({len(data)} bytes, need {header})")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise IdxError(f"{name}: IDX size mismatch: header says shape {shape} ({expected} bytes), "
                       f"file has {len(data)} bytes (truncated or corrupt)")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file; ``.gz`` files are decompressed (a truncated gzip raises :class:`IdxError`)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        return parse_idx(gunzip(f.read(), path), path)


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX bytes of a uint8 array (MNIST's format: magic ``0x0000 08 <rank>``, big-endian dimensions, data)."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"IDX bytes are written for uint8 arrays here, got {array.dtype}")
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()
