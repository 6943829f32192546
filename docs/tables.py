"""Write the settings and CLI-flag tables in docs/ from the code's own descriptions.

    .venv/bin/python docs/tables.py          # rewrite the tables between their markers
    .venv/bin/python docs/tables.py --check  # exit 1 if a table is out of date (tests/unit/test_docs.py)

The service's table comes from ServiceSettings' fields, the training table from the CLI's parser: a
setting or flag documented by hand could drift from what the code does; these cannot.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))


def settings_table() -> str:
    from service.settings import ENV_PREFIX, ServiceSettings

    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in ServiceSettings.model_fields.items():
        default = "unset" if field.default is None else f"`{field.default}`"
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {default} | {field.description} |")
    return "\n".join(rows)


def cli_table() -> str:
    from training.config import build_parser

    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for action in build_parser()._actions:  # argparse keeps its options here; there is no public list
        if not action.option_strings or action.dest == "help":
            continue
        flags = ", ".join(f"`{s}`" for s in action.option_strings)
        default = action.default
        shown = " ".join(default) if isinstance(default, tuple) else default
        shown = SHOWN_DEFAULTS.get(action.dest, "" if default is None else f"`{shown}`")
        rows.append(f"| {flags} | {shown} | {action.help} |")
    return "\n".join(rows)


SHOWN_DEFAULTS = {"workers": "min(4, CPU cores)"}  # defaults that depend on the host, in words


TABLES = {"serving.md": ("settings-table", settings_table), "training.md": ("cli-table", cli_table)}


def render(text: str, marker: str, table: str) -> str:
    pattern = re.compile(rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)", re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"error: the {marker} markers are missing")
    return pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)


def outdated() -> list[str]:
    """The docs files whose generated tables differ from what the code says now."""
    return [
        name
        for name, (marker, make) in TABLES.items()
        if render((DOCS / name).read_text(), marker, make()) != (DOCS / name).read_text()
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check that the tables are up to date (default: off)")
    args = p.parse_args(argv)
    if args.check:
        stale = outdated()
        for name in stale:
            print(f"docs/{name} is out of date: run docs/tables.py", file=sys.stderr)
        return 1 if stale else 0
    for name, (marker, make) in TABLES.items():
        path = DOCS / name
        path.write_text(render(path.read_text(), marker, make()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
