"""The hop between the front and the model runner, without pickle.

BentoML sends arguments and results between its services with pickle (media type
``application/vnd.bentoml+pickle``), and unpickling runs code chosen by whoever wrote the bytes.
Our two services only exchange numpy arrays of numbers, bytes (JPEGs), and plain JSON values, so
``install()`` puts a serde in pickle's place, in this server's processes, that can carry exactly
those: a JSON header describing the structure, then the raw buffers. Anything else is refused when
sent or received; nothing received is ever executed. The hook into BentoML is service/bentoml_compat.py's install_serde.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from service import bentoml_compat

MEDIA_TYPE = bentoml_compat.SERDE_MEDIA_TYPE
LENGTHS_HEADER = "buffer-lengths"
_NUMERIC_KINDS = "biuf"  # bool, int, uint, float: never object arrays
_MAX_DEPTH = 16  # what the services send is 3 deep


class TransportError(ValueError):
    """A value this transport will not carry, or a payload it will not read."""


def _pack(obj: Any, buffers: list[memoryview]) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _NUMERIC_KINDS:
            raise TransportError(f"cannot send an array of dtype {obj.dtype}")
        buffers.append(np.ascontiguousarray(obj).reshape(-1).view(np.uint8).data)
        return {"$array": len(buffers), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, bytes | bytearray | memoryview):
        buffers.append(memoryview(obj).cast("B"))
        return {"$bytes": len(buffers)}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TransportError("only str keys can be sent")
        return {"$dict": {k: _pack(v, buffers) for k, v in obj.items()}}
    if isinstance(obj, list | tuple):
        return [_pack(v, buffers) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TransportError(f"cannot send a {type(obj).__name__} between the services")


class _Buffers:
    """The payload's buffers; each may be used once (no payload can make many copies of one buffer)."""

    def __init__(self, parts: list[memoryview]) -> None:
        self.parts, self.used = parts, set[int]()

    def take(self, index: Any) -> memoryview:
        if not isinstance(index, int) or not 1 <= index <= len(self.parts) or index in self.used:
            raise TransportError("malformed payload: bad buffer index")
        self.used.add(index)
        return self.parts[index - 1]


def _unpack(obj: Any, buffers: _Buffers, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise TransportError("malformed payload: nested too deeply")
    if isinstance(obj, list):
        return [_unpack(v, buffers, depth + 1) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if set(obj) == {"$dict"} and isinstance(obj["$dict"], dict):
        return {k: _unpack(v, buffers, depth + 1) for k, v in obj["$dict"].items()}
    if set(obj) == {"$bytes"}:
        return bytes(buffers.take(obj["$bytes"]))
    if set(obj) == {"$array", "dtype", "shape"}:
        try:
            dtype = np.dtype(str(obj["dtype"]))
        except TypeError:
            raise TransportError("malformed array dtype") from None
        if dtype.kind not in _NUMERIC_KINDS or dtype.subdtype is not None or dtype.fields is not None:
            raise TransportError(f"refusing an array of dtype {dtype}")
        try:  # a read-only view of the body, no copy (as pickle's out-of-band buffers gave)
            return np.frombuffer(buffers.take(obj["$array"]), dtype=dtype).reshape(obj["shape"])
        except (ValueError, TypeError) as exc:
            raise TransportError(f"malformed array: {exc}") from None
    raise TransportError("malformed payload")


def encode(obj: Any) -> tuple[list[Any], str]:
    """``obj`` -> (chunks to send, value of the buffer-lengths header)."""
    buffers: list[memoryview] = []
    header = json.dumps(_pack(obj, buffers)).encode()
    chunks = [header, *buffers]
    return chunks, ",".join(str(len(c)) for c in chunks)


def decode(data: bytes, lengths: str | None) -> Any:
    """Inverse of encode; TransportError for anything it did not produce (a missing ``lengths`` too)."""
    if lengths is None:
        raise TransportError(f"missing {LENGTHS_HEADER} header")
    try:
        sizes = [int(n) for n in lengths.split(",")]
    except ValueError:
        raise TransportError("malformed buffer-lengths header") from None
    if any(n < 0 for n in sizes) or sum(sizes) != len(data):
        raise TransportError("buffer lengths do not match the body")
    view, parts, start = memoryview(data), [], 0
    for n in sizes:
        parts.append(view[start : start + n])
        start += n
    try:
        header = json.loads(bytes(parts[0]))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise TransportError("malformed payload header") from None
    buffers = _Buffers(parts[1:])
    value = _unpack(header, buffers)
    if len(buffers.used) != len(buffers.parts):
        raise TransportError("malformed payload: unused buffers")
    return value


def install() -> None:
    """Use this transport for BentoML's service-to-service hop in this process, in place of pickle (idempotent)."""
    bentoml_compat.install_serde(encode, decode, LENGTHS_HEADER)
