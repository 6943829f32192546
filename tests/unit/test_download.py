"""The dataset download path, against a real HTTP server on loopback."""

import functools
import http.server
import threading
import time
import zipfile

import pytest

from training.download import CATS_DOGS_DIR, fetch_cats_and_dogs, sha256_file, verify_archive
from training.errors import TrainingError


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def http_dir(tmp_path):
    """Serve a folder over HTTP on a free loopback port; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verify_extract_then_reuse(tmp_path, http_dir):
    www, base = http_dir
    archive = _zip(
        www / "data.zip", {f"{CATS_DOGS_DIR}/train/cats/a.jpg": b"x", f"{CATS_DOGS_DIR}/validation/dogs/b.jpg": b"y"}
    )
    size, digest = archive.stat().st_size, sha256_file(archive)
    cache = tmp_path / "cache"
    target = fetch_cats_and_dogs(cache, url=f"{base}/data.zip", expected_sha256=digest, expected_size=size)
    assert (target / "train" / "cats" / "a.jpg").read_bytes() == b"x"
    assert (cache / "cats_and_dogs_filtered.zip.sha256").read_text().strip() == digest
    archive.unlink()  # a second call must not download again, but checks the cached archive again
    assert fetch_cats_and_dogs(cache, url=f"{base}/data.zip", expected_size=size) == target
    with pytest.raises(TrainingError, match="SHA-256"):
        fetch_cats_and_dogs(cache, url=f"{base}/data.zip", expected_sha256="f" * 64, expected_size=size)
    assert not (cache / "cats_and_dogs_filtered.zip").exists()  # a corrupt cache is removed
    assert fetch_cats_and_dogs(cache, url=f"{base}/data.zip", expected_size=size) == target  # extracted copy stays


def test_offline_fails_fast_with_one_line_that_says_what_to_do(tmp_path):
    start = time.perf_counter()
    with pytest.raises(TrainingError) as info:
        fetch_cats_and_dogs(tmp_path, url="http://127.0.0.1:9/cats_and_dogs_filtered.zip")
    assert time.perf_counter() - start < 60  # a refused connection fails at once; this only catches retry loops
    assert "--data DIR" in str(info.value) and "\n" not in str(info.value)
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob("*.zip"))


def test_size_mismatch_deletes_archive(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"x": b"1"})
    with pytest.raises(TrainingError, match="size"):
        verify_archive(archive, expected_size=archive.stat().st_size + 1, expected_sha256=None)
    assert not archive.exists()


def test_sha_mismatch_against_pinned_or_recorded_digest(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"x": b"1"})
    size = archive.stat().st_size
    with pytest.raises(TrainingError, match="SHA-256"):
        verify_archive(archive, expected_size=size, expected_sha256="0" * 64)
    archive = _zip(tmp_path / "a.zip", {"x": b"1"})
    verify_archive(archive, expected_size=size, expected_sha256=None)  # records the digest
    raw = archive.read_bytes()
    archive.write_bytes(raw[:-1] + bytes([raw[-1] ^ 0xFF]))  # same size, other bytes
    with pytest.raises(TrainingError, match="SHA-256"):
        verify_archive(archive, expected_size=size, expected_sha256=None)


def test_crc_failure_is_caught(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"x.txt": b"hello world" * 100})
    raw = bytearray(archive.read_bytes())
    offset = raw.index(b"hello")
    raw[offset] ^= 0xFF  # stored (uncompressed) member: flip a byte of its data
    archive.write_bytes(bytes(raw))
    with pytest.raises(TrainingError, match="CRC|not a valid zip"):
        verify_archive(archive, expected_size=len(raw), expected_sha256=None)
