"""The architecture's rules, checked on the source: dependencies point one way, BentoML's internals and other
processes' command lines are touched in one module only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPAT = REPO / "service" / "bentoml_compat.py"


def sources(*packages: str) -> list[Path]:
    return [p for package in packages for p in sorted((REPO / package).rglob("*.py"))]


def imported(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Modules ``path`` imports (at module level only, if asked: what importing it costs)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def roots(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("path", sources("classifier"), ids=lambda p: str(p.relative_to(REPO)))
def test_the_model_package_imports_neither_serving_nor_training_nor_http(path):
    assert not roots(imported(path)) & {"service", "training", "fastapi", "starlette", "_bentoml_impl"}
    if path.name != "store.py":  # the store reaches BentoML's model store (bentoml.models), inside its functions
        assert "bentoml" not in roots(imported(path))
    assert "bentoml" not in roots(imported(path, top_level_only=True))


@pytest.mark.parametrize("path", sources("service"), ids=lambda p: str(p.relative_to(REPO)))
def test_the_service_never_imports_training(path):
    assert "training" not in roots(imported(path))


@pytest.mark.parametrize(
    "path", sources("classifier", "service", "training", "loadtests", "tests"), ids=lambda p: str(p.relative_to(REPO))
)
def test_bentoml_internals_and_command_lines_only_in_the_compat_module(path):
    if path in (COMPAT, Path(__file__).resolve()):
        return
    assert "_bentoml_impl" not in roots(imported(path)), "use service/bentoml_compat.py"
    text = path.read_text()
    assert ".cmdline()" not in text, "read worker processes through service/bentoml_compat.py"
