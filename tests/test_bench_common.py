"""bench/common.py's write_section, and every bench module still importing (no services)."""

from __future__ import annotations

import importlib
import py_compile
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import write_section  # noqa: E402

TRICKY = "| a\\b | \\1 | $ | \\g<0> | \\\\ |"
DOC = """# Performance

<!-- bench/a.py:begin -->
old a
<!-- bench/a.py:end -->

Prose between.

<!-- bench/b.py:begin -->
old b
<!-- bench/b.py:end -->
"""


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    path = tmp_path / "PERFORMANCE.md"
    path.write_text(DOC)
    return path


def test_replaces_existing_section_literally(doc: Path) -> None:
    write_section(doc, "bench/a.py", TRICKY)
    assert doc.read_text() == DOC.replace("old a", TRICKY)


def test_other_sections_untouched(doc: Path) -> None:
    write_section(doc, "bench/b.py", "new b\n\\g<0>")
    text = doc.read_text()
    assert "old a" in text and "Prose between." in text
    assert text.endswith("<!-- bench/b.py:begin -->\nnew b\n\\g<0>\n<!-- bench/b.py:end -->\n")


def test_missing_section_appended(doc: Path) -> None:
    write_section(doc, "bench/c.py", TRICKY)
    assert doc.read_text() == (
        DOC + f"\n<!-- bench/c.py:begin -->\n{TRICKY}\n<!-- bench/c.py:end -->\n"
    )


def test_missing_section_appended_under_heading(doc: Path) -> None:
    write_section(doc, "bench/c.py", "x", heading="## C — `bench/c.py`")
    assert doc.read_text().endswith(
        "old b\n<!-- bench/b.py:end -->\n\n## C — `bench/c.py`\n\n"
        "<!-- bench/c.py:begin -->\nx\n<!-- bench/c.py:end -->\n"
    )


def test_missing_file_created(tmp_path: Path) -> None:
    path = tmp_path / "NEW.md"
    write_section(path, "bench/a.py", TRICKY)
    assert path.read_text() == f"<!-- bench/a.py:begin -->\n{TRICKY}\n<!-- bench/a.py:end -->\n"


def test_rewriting_is_stable(doc: Path) -> None:
    write_section(doc, "bench/a.py", TRICKY)
    once = doc.read_text()
    write_section(doc, "bench/a.py", TRICKY)
    assert doc.read_text() == once


def test_required_section_missing_refused(doc: Path) -> None:
    with pytest.raises(SystemExit):
        write_section(doc, "bench/c.py", "x", required=True)
    assert doc.read_text() == DOC


def test_unterminated_section_refused(tmp_path: Path) -> None:
    path = tmp_path / "P.md"
    path.write_text("<!-- bench/a.py:begin -->\nno end\n")
    with pytest.raises(SystemExit):
        write_section(path, "bench/a.py", "x")
    assert path.read_text() == "<!-- bench/a.py:begin -->\nno end\n"


# Modules that do nothing when imported.
IMPORTABLE = ["common", "procstats", "sweeps_ab"]
# Modules that reserve Redis databases, set DATABASE_URL and the like at import time,
# or import optional tools (Playwright, Hypothesis): compiled only.
COMPILED_ONLY = sorted(
    {p.stem for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__"} - set(IMPORTABLE)
)


@pytest.mark.parametrize("name", IMPORTABLE)
def test_bench_module_imports(name: str) -> None:
    importlib.import_module(f"bench.{name}")


@pytest.mark.parametrize("name", COMPILED_ONLY)
def test_bench_module_compiles(name: str) -> None:
    py_compile.compile(str(ROOT / "bench" / f"{name}.py"), doraise=True)
