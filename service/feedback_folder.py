"""The feedback folder: labelled images written in the class-folder layout that ``python -m training --data``
and ``--extra-data`` read, within a bound on count and bytes.

Nothing the client sends is ever used as a path: the class folder is one of the model's class names and the
file name is the image's content hash with the extension of its decoded format. Writes are atomic (a
temporary file in ``.incoming/``, which training ignores, then a rename), and each stored image gets a line in
``feedback.jsonl`` (request id, label, served answer, time).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

INCOMING = ".incoming"
LOG_FILE = "feedback.jsonl"
_FILE_MODE = 0o644  # readable by a training job run as another user (mkstemp gives 0600)
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "TIFF": "tif", "BMP": "bmp"}


class FolderFull(Exception):
    """The folder holds its maximum count or bytes of images."""


class ConflictingLabel(Exception):
    """The folder already holds this very image under another class."""


@dataclass(frozen=True)
class Stored:
    name: str  # the file's name within its class folder (a content hash): the same image is stored once
    new: bool  # False when that class already held this very image


class FeedbackFolder:
    """``root/<class>/<sha256>.<ext>`` for each labelled image, at most ``max_images`` and ``max_bytes``."""

    def __init__(self, root: Path, class_names: tuple[str, ...], *, max_images: int, max_bytes: int) -> None:
        """Create the folder if needed and count what it holds; OSError when it cannot be written."""
        for name in class_names:  # the model's class names come from folder names, but a path must never escape
            if Path(name).name != name or name.startswith("."):
                raise ValueError(f"class name {name!r} cannot be a folder name")
        self.root, self.class_names = root, class_names
        self.max_images, self.max_bytes = max_images, max_bytes
        (root / INCOMING).mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=root / INCOMING)  # fails now, not on the first feedback
        probe.close()
        self._lock = threading.Lock()
        self.images, self.bytes = self._count()

    @property
    def fill(self) -> float:
        """How full the folder is: the larger of its image and byte shares of the bounds (1: full)."""
        return max(self.images / self.max_images, self.bytes / self.max_bytes)

    def _count(self) -> tuple[int, int]:
        images = size = 0
        for name in self.class_names:
            folder = self.root / name
            if folder.is_dir():
                for path in folder.iterdir():
                    if path.is_file() and not path.name.startswith("."):
                        images += 1
                        size += path.stat().st_size
        return images, size

    def store(self, data: bytes, label: str, image_format: str, record: dict[str, Any]) -> Stored:
        """Write ``data`` (an image of ``image_format``, already decoded once) into ``label``'s folder; raises
        FolderFull (nothing written) when it would exceed the bounds."""
        if label not in self.class_names or image_format not in EXTENSIONS:
            raise ValueError(f"unexpected label {label!r} or format {image_format!r}")  # callers check both first
        name = f"{hashlib.sha256(data).hexdigest()[:32]}.{EXTENSIONS[image_format]}"
        target = self.root / label / name
        with self._lock:
            if target.exists():
                return Stored(name, new=False)
            other = next((c for c in self.class_names if c != label and (self.root / c / name).exists()), None)
            if other is not None:  # training would learn it as both
                raise ConflictingLabel(f"this image is already kept as {other!r}; it cannot also be {label!r}")
            if self.images + 1 > self.max_images or self.bytes + len(data) > self.max_bytes:
                raise FolderFull(
                    f"the feedback folder is full ({self.images:,} images, {self.bytes:,} bytes; limits "
                    f"{self.max_images:,} and {self.max_bytes:,}): retrain with it, then empty or move it"
                )
            target.parent.mkdir(exist_ok=True)
            self._write_atomically(target, data)
            self.images += 1
            self.bytes += len(data)
            with open(self.root / LOG_FILE, "a", encoding="utf-8") as log:
                log.write(json.dumps({"time": time.time(), "file": f"{label}/{name}", **record}) + "\n")
        return Stored(name, new=True)

    def _write_atomically(self, target: Path, data: bytes) -> None:
        fd, temporary = tempfile.mkstemp(dir=self.root / INCOMING)
        try:
            os.fchmod(fd, _FILE_MODE)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
