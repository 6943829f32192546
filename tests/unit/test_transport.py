"""The front-to-runner transport: numbers, bytes and JSON values round-trip; pickle is never read."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import pytest

from service.bentoml_compat import installed_serde
from service.transport import TransportError, decode, encode, install


def payload(data, metadata):
    """What BentoML hands a serde: the body's chunks and the request's headers."""
    return SimpleNamespace(data=data, metadata=metadata)


def roundtrip(obj):
    chunks, lengths = encode(obj)
    return decode(b"".join(bytes(c) for c in chunks), lengths)


def test_what_the_services_exchange_round_trips():
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
    probs = np.random.default_rng(1).random((3, 2), dtype=np.float32)
    out = roundtrip({"images": images, "jpegs": [b"\xff\xd8a", b""], "probs": probs, "n": 3, "x": None})
    assert out["images"].dtype == np.uint8 and np.array_equal(out["images"], images)
    assert out["probs"].dtype == np.float32 and np.array_equal(out["probs"], probs)
    assert out["jpegs"] == [b"\xff\xd8a", b""] and out["n"] == 3 and out["x"] is None
    assert not out["images"].flags.writeable  # a view of the body: nothing can scribble on another request


@pytest.mark.parametrize(
    "a", [np.arange(24, dtype=np.int64).reshape(4, 6)[:, ::2], np.zeros((0, 2), np.float32), np.array([True, False])]
)
def test_non_contiguous_empty_and_bool_arrays_round_trip(a):
    out = roundtrip(a)
    assert out.dtype == a.dtype and out.shape == a.shape and np.array_equal(out, a)


@pytest.mark.parametrize("value", [np.array([object()]), {1: "int key"}, object(), {"s": {1, 2}}])
def test_anything_else_is_refused_when_sent(value):
    with pytest.raises(TransportError):
        encode(value)


class Exploit:
    def __reduce__(self):  # unpickling this would run code
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_a_pickle_is_refused_and_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = pickle.dumps(Exploit())
    install()
    serde = installed_serde()()
    with pytest.raises(TransportError):
        serde.deserialize_value(payload((data,), {"buffer-lengths": str(len(data))}))
    with pytest.raises(TransportError):  # BentoML's own pickle framing, without our header
        serde.deserialize_value(payload((data,), {}))
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    "body, lengths",
    [
        (b'{"$array": 1, "dtype": "|O", "shape": [1]}' + b"\0" * 8, "42,8"),  # object dtype
        (b'{"$array": 1, "dtype": "<f4", "shape": [9]}' + b"\0" * 8, "43,8"),  # shape larger than the buffer
        (b'{"$bytes": 2}', "13"),  # buffer that does not exist
        (b'{"$eval": 1}', "12"),  # unknown marker
        (b"not json", "8"),
        (b"{}", "1,1"),
        (b"{}", "x"),
        (b'[{"$bytes": 1}, {"$bytes": 1}]' + b"\0" * 4, "30,4"),  # one buffer twice: memory amplification
        (b'{"$bytes": 1}' + b"\0" * 8, "13,4,4"),  # a buffer left over
        (b"[" * 200 + b"]" * 200, "400"),
    ],  # nesting deeper than anything the services send
)
def test_malformed_payloads_are_refused(body, lengths):
    with pytest.raises(TransportError):
        decode(body, lengths)


def test_install_replaces_bentoml_pickle_serde():
    install()
    serde = installed_serde()()  # the hook BentoML 1.4.30 looks up per request
    assert type(serde).__name__ == "ArraySerde"
    sent = serde.serialize_value({"images": np.zeros((1, 3), np.uint8)})
    assert serde.deserialize_value(payload([bytes(c) for c in sent.data], sent.metadata))["images"].shape == (1, 3)
