"""The configuration table, generated from the settings declared in registry/config.py.

README.md and docs/CONTRACT.md carry the same table between two markers; this module
renders it and rewrites what lies between them, so the documents cannot drift from
the code (tests/test_contract.py fails when they do):

    python -m registry.configdoc            # rewrite the tables (scripts/gen-config-table)
    python -m registry.configdoc --check    # exit 1 when a table is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from registry.config import options

START = "<!-- config-table:start (generated from registry/config.py by scripts/gen-config-table; do not edit) -->"
END = "<!-- config-table:end -->"
ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS: tuple[Path, ...] = (ROOT / "README.md", ROOT / "docs" / "CONTRACT.md")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table() -> str:
    """Every setting, in declaration order: variable, default, meaning."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for _, opt in options():
        lines.append(f"| `{opt.env}` | {_cell(opt.default_text)} | {_cell(opt.doc)} |")
    return "\n".join(lines)


class MissingMarkers(ValueError):
    pass


def current_table(document: str) -> str:
    """The table between the markers of `document` (text)."""
    try:
        _head, rest = document.split(START, 1)
        body, _tail = rest.split(END, 1)
    except ValueError:
        raise MissingMarkers("the configuration table markers are missing") from None
    return body.strip("\n")


def with_table(document: str, table: str) -> str:
    current_table(document)  # the markers must be there
    head, rest = document.split(START, 1)
    _body, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def rewrite(path: Path) -> bool:
    """Write the generated table into `path`; True when it changed."""
    text = path.read_text(encoding="utf-8")
    updated = with_table(text, markdown_table())
    if updated != text:
        path.write_text(updated, encoding="utf-8")
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report out-of-date tables")
    parser.add_argument("--print", action="store_true", help="print the table and exit")
    parser.add_argument("paths", nargs="*", type=Path, default=list(DOCUMENTS))
    args = parser.parse_args(argv)
    if args.print:
        sys.stdout.write(markdown_table() + "\n")
        return 0
    stale = []
    for path in args.paths:
        try:
            if args.check:
                if current_table(path.read_text(encoding="utf-8")) != markdown_table():
                    stale.append(path)
            elif rewrite(path):
                sys.stdout.write(f"updated {path}\n")
        except MissingMarkers as exc:
            sys.stderr.write(f"{path}: {exc} ({START!r} … {END!r})\n")
            return 2
    for path in stale:
        sys.stderr.write(f"{path}: configuration table out of date; run scripts/gen-config-table\n")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
