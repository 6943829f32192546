"""The docs agree with the code: generated tables are current, the README stays short, links resolve."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _tables():
    spec = importlib.util.spec_from_file_location("doc_tables", REPO / "docs" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_and_cli_tables_are_generated_from_the_code():
    tables = _tables()
    assert tables.outdated() == [], "run .venv/bin/python docs/tables.py"
    serving = (REPO / "docs" / "serving.md").read_text()
    from service.settings import ServiceSettings

    documented = set(re.findall(r"^\| `(CLASSIFIER_[A-Z_]+)` \|", serving, re.MULTILINE))
    assert documented == {f"CLASSIFIER_{name.upper()}" for name in ServiceSettings.model_fields}  # all, and only
    assert "--export" in (REPO / "docs" / "training.md").read_text()


def test_a_stale_table_is_detected(tmp_path, monkeypatch):
    tables = _tables()
    for name in tables.TABLES:
        (tmp_path / name).write_text((REPO / "docs" / name).read_text().replace("largest batch", "biggest batch"))
    monkeypatch.setattr(tables, "DOCS", tmp_path)
    assert tables.outdated() == ["serving.md"]


def test_readme_is_short_and_its_links_resolve():
    readme = REPO / "README.md"
    assert len(readme.read_bytes()) <= 10 * 1024
    for doc in [readme, *(REPO / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target:
                assert (doc.parent / target).exists(), (doc.name, target)
