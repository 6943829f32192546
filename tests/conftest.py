"""Shared fixtures. BentoML's store and our caches point at temporary folders for the whole run."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Before anything imports bentoml: tests never touch the user's model store or caches.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="transfer-serve-tests-"))
os.environ["BENTOML_HOME"] = str(_SESSION_TMP / "bentoml")
os.environ["TRANSFER_SERVE_CACHE"] = str(_SESSION_TMP / "cache")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

ODD_IMAGES = Path(__file__).parent / "data" / "odd-images"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def odd_image():
    """Bytes of one file in tests/data/odd-images."""
    return lambda name: (ODD_IMAGES / name).read_bytes()


def small_contract(class_names: tuple[str, ...] = ("ants", "bees")):
    """A ResNet18 contract at 64 px, random weights: small enough to build, export and run in a unit test."""
    from classifier.contract import ModelContract

    return ModelContract(
        class_names=class_names,
        backbone="resnet18",
        weights="none",
        image_size=64,
        resize_size=72,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        dropout=0.2,
    )


@pytest.fixture
def contract():
    return small_contract()


_REPORTS: list[str] = []


@pytest.fixture
def report():
    """``report(line)``: a figure a test measured (an image's size, say), printed in pytest's summary."""
    return _REPORTS.append


def pytest_terminal_summary(terminalreporter) -> None:
    if _REPORTS:
        terminalreporter.section("measured")
        for line in _REPORTS:
            terminalreporter.write_line(line)


def pytest_sessionfinish(session, exitstatus) -> None:
    """The run's model store and caches go with it: a few GB per run, which filled a disk over a day of runs."""
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)
