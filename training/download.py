"""Fetch the default dataset (cats vs dogs, filtered) once into a cache folder.

The archive's size is pinned and every member's CRC is checked. Its SHA-256 is checked
against ``--dataset-sha256`` when given, else recorded on the first verified download and
checked against that record on every later use, so a corrupted or swapped cache is caught.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from training.errors import TrainingError

logger = logging.getLogger(__name__)

CATS_DOGS_URL = "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"
CATS_DOGS_SIZE = 68_606_236
CATS_DOGS_DIR = "cats_and_dogs_filtered"
CONNECT_TIMEOUT_S = 10.0
_CHUNK = 1 << 20


def fetch_cats_and_dogs(
    cache_dir: Path,
    *,
    url: str = CATS_DOGS_URL,
    expected_sha256: str | None = None,
    expected_size: int = CATS_DOGS_SIZE,
) -> Path:
    """Return the extracted dataset folder, downloading and verifying it on first use."""
    target = cache_dir / CATS_DOGS_DIR
    archive = cache_dir / "cats_and_dogs_filtered.zip"
    cache_dir.mkdir(parents=True, exist_ok=True)
    if not archive.exists():
        if (target / ".complete").exists():
            return target  # the user removed the archive to save space: nothing left to check
        _download(url, archive)
    digest = verify_archive(archive, expected_size=expected_size, expected_sha256=expected_sha256)
    if (target / ".complete").exists():
        return target
    _extract(archive, cache_dir, target)
    logger.info("dataset ready at %s (sha256 %s)", target, digest)
    return target


def _download(url: str, dest: Path) -> None:
    partial = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT_S) as response, partial.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="download dataset") as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise TrainingError(
            f"could not download the default dataset from {url} ({reason}); offline, pass a local "
            "folder of class sub-folders with --data DIR (e.g. --data ../shared/data/hymenoptera_data)"
        ) from exc
    partial.replace(dest)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_archive(archive: Path, *, expected_size: int, expected_sha256: str | None) -> str:
    """Check size, SHA-256 and every member's CRC; delete the archive and raise if any fails."""
    record = archive.with_suffix(archive.suffix + ".sha256")
    problem = None
    size = archive.stat().st_size
    digest = sha256_file(archive)
    pinned = expected_sha256 or (record.read_text().strip() if record.exists() else None)
    if size != expected_size:
        problem = f"its size is {size:,} bytes, expected {expected_size:,}"
    elif pinned and digest != pinned.lower():
        problem = f"its SHA-256 is {digest}, expected {pinned}"
    else:
        try:
            with zipfile.ZipFile(archive) as zf:
                bad = zf.testzip()
            if bad is not None:
                problem = f"member {bad} fails its CRC check"
        except zipfile.BadZipFile as exc:
            problem = f"it is not a valid zip archive ({exc})"
    if problem:
        archive.unlink(missing_ok=True)
        raise TrainingError(f"the downloaded dataset {archive.name} is corrupt: {problem}; run again to re-download")
    if not record.exists():
        record.write_text(digest + "\n")
    return digest


def _extract(archive: Path, cache_dir: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for member in tqdm(members, desc="extract dataset", unit="file"):
            dest = (cache_dir / member.filename).resolve()
            if not dest.is_relative_to(cache_dir.resolve()):
                raise TrainingError(f"refusing to extract {member.filename!r}: it points outside {cache_dir}")
            zf.extract(member, cache_dir)
    if not target.is_dir():
        raise TrainingError(f"the archive did not contain the expected folder {CATS_DOGS_DIR}/")
    (target / ".complete").touch()
