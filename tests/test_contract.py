"""docs/CONTRACT.md against the code: nothing public may be added without being documented.

Every task the worker registers, every queue, status, event type, payload field,
setting and beat entry must appear in docs/CONTRACT.md; the configuration tables of
README.md and docs/CONTRACT.md must be the ones generated from registry/config.py;
every "CONTRACT §n" citation must point at a section that exists; and nothing in the
repository may point outside it. Each check is a function returning what is missing,
and each is shown to catch an undocumented addition.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from molecule_registry_client.names import QUEUE_NAMES, queue_for
from registry import configdoc
from registry.config import Option, Settings, options
from registry.ingestion import payloads
from registry.statuses import EventType, Status
from registry.sweeps.containers import MANAGED_LABEL, MANAGED_LABEL_VALUE
from tasks.base import DECLARATIONS, PeriodicTask, RegistryTask

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "docs" / "CONTRACT.md"
README = ROOT / "README.md"

# Payload models and the contract section documenting their fields.
PAYLOAD_MODELS = {
    "§4.1": (payloads.RegisterPayload,),
    "§4.2": (payloads.HeartbeatPayload,),
    "§4.3": (payloads.UpdateCardPayload,),
    "§4.4": (payloads.CreateWorkspacePayload, payloads.RemoveWorkspacePayload),
    "§9": (payloads.CanCommunicatePayload,),
}


def contract_text() -> str:
    return CONTRACT.read_text(encoding="utf-8")


def section(text: str, number: str) -> str:
    """The body of `## §n` or `### §n` up to the next heading of the same or higher level."""
    match = re.search(rf"^(#+) {re.escape(number)}\b.*$", text, re.MULTILINE)
    assert match, f"docs/CONTRACT.md has no section {number}"
    level = len(match.group(1))
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def undocumented(names: object, text: str) -> list[str]:
    """The names that do not appear in `text` as `code`."""
    return sorted(str(n) for n in names if f"`{n}`" not in text)  # type: ignore[attr-defined]


def registered_tasks(celery_app) -> list[str]:
    return sorted(name for name in celery_app.tasks if name.startswith("registry."))


@pytest.fixture(scope="module")
def app():
    from workers.app import app as celery_app

    celery_app.loader.import_default_modules()
    return celery_app


# --- tasks and queues ---------------------------------------------------------------


def test_every_registered_task_is_documented(app):
    tasks = registered_tasks(app)
    assert len(tasks) >= 13
    assert undocumented(tasks, section(contract_text(), "§4")) == []


def test_every_registered_task_is_declared_on_the_base_task_and_routed_like_the_client(app):
    # "No task works around the base": every task of the registry is a RegistryTask,
    # declared with its queue, and that queue is the one producers route to.
    for name in registered_tasks(app):
        task = app.tasks[name]
        assert isinstance(task, RegistryTask), name
        assert name in DECLARATIONS, f"{name} is not declared with message_task/periodic_task"
        assert DECLARATIONS[name].queue == task.queue == queue_for(name), name


def test_every_queue_is_documented():
    assert undocumented(QUEUE_NAMES, section(contract_text(), "§4")) == []


def test_every_periodic_task_documents_its_beat_entry_and_interval_setting(app):
    sweeps = section(contract_text(), "§5")
    periodic = [d for d in DECLARATIONS.values() if d.entry is not None]
    assert len(periodic) >= 6
    for declaration in periodic:
        assert isinstance(app.tasks[declaration.name], PeriodicTask)
        env = Settings.__dataclass_fields__[declaration.every].metadata["option"].env
        row = next((line for line in sweeps.splitlines() if f"`{declaration.name}`" in line), "")
        assert f"`{declaration.entry}`" in row, f"§5: no beat entry for {declaration.name}"
        assert f"`{env}`" in row, f"§5: no interval setting for {declaration.name}"


def test_every_payload_field_is_documented_in_its_section():
    text = contract_text()
    for number, models in PAYLOAD_MODELS.items():
        for model in models:
            assert undocumented(model.model_fields, section(text, number)) == [], model


# --- vocabulary -------------------------------------------------------------------


def _table_first_cells(text: str) -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", text, re.MULTILINE))


def test_every_status_is_in_the_status_table():
    statuses = _table_first_cells(section(contract_text(), "§3"))
    assert sorted(s.value for s in Status if s.value not in statuses) == []


def test_every_event_type_is_in_the_event_table():
    events = _table_first_cells(section(contract_text(), "§7"))
    assert sorted(e.value for e in EventType if e.value not in events) == []
    # …and nothing documented there that the code does not have.
    assert events - {e.value for e in EventType} == set()


def test_redis_keys_channel_stream_and_the_managed_label_are_documented():
    from registry.events.outbox import BROADCAST_CHANNEL, EVENT_STREAM
    from registry.liveness.keys import internal_url_key, liveness_key, url_key

    keys = [f(" <id>").replace(" ", "") for f in (liveness_key, url_key, internal_url_key)]
    text = contract_text()
    assert undocumented(keys, section(text, "§8")) == []
    assert undocumented([BROADCAST_CHANNEL, EVENT_STREAM], section(text, "§7")) == []
    assert f"`{MANAGED_LABEL}={MANAGED_LABEL_VALUE}`" in section(text, "§5")


# --- configuration ----------------------------------------------------------------


def test_every_setting_is_in_both_generated_tables():
    table = configdoc.markdown_table()
    for _, option in options():
        assert f"| `{option.env}` |" in table
    for document in (README, CONTRACT):
        current = configdoc.current_table(document.read_text(encoding="utf-8"))
        assert current == table, (
            f"{document.name}: configuration table out of date; run scripts/gen-config-table"
        )


def test_the_generator_check_passes_and_its_command_runs():
    assert configdoc.main(["--check"]) == 0
    out = subprocess.run(
        [sys.executable, "-m", "registry.configdoc", "--print"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=ROOT,
    ).stdout
    assert out.strip() == configdoc.markdown_table()


def test_generated_table_rewrites_only_between_the_markers(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(f"before\n{configdoc.START}\n| stale |\n{configdoc.END}\nafter\n")
    assert configdoc.main(["--check", str(doc)]) == 1
    assert configdoc.main([str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("after\n")
    assert configdoc.current_table(text) == configdoc.markdown_table()
    assert configdoc.main(["--check", str(doc)]) == 0
    doc.write_text("no markers here\n")
    assert configdoc.main(["--check", str(doc)]) == 2


# --- the checks catch undocumented additions ----------------------------------------


def test_an_undocumented_name_is_reported():
    text = contract_text()
    assert undocumented(["registry.sweep_everything"], section(text, "§4")) == [
        "registry.sweep_everything"
    ]
    assert "zombie" not in _table_first_cells(section(text, "§3"))
    assert "WORKSPACE_EXPLODED" not in _table_first_cells(section(text, "§7"))


def test_a_setting_added_in_code_makes_the_tables_stale(monkeypatch):
    extra = Option("BRAND_NEW_SETTING", int, 7, "a setting nobody documented")
    listed = [*options(), ("brand_new", extra)]
    monkeypatch.setattr(configdoc, "options", lambda: listed)
    assert "| `BRAND_NEW_SETTING` | 7 | a setting nobody documented |" in configdoc.markdown_table()
    assert configdoc.main(["--check"]) == 1


# --- citations and self-containment --------------------------------------------------

SOURCES = ("*.py", "*.md", "*.toml", "*.js", "*.html", "*.css", "*.sh", "*.ini", "*.mako")


def _repository_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def _text_files() -> list[Path]:
    return [
        p
        for p in _repository_files()
        if any(p.match(pattern) for pattern in SOURCES) or p.parent.name == "scripts"
    ]


def test_every_contract_citation_points_at_a_section():
    headings = set(re.findall(r"^#+ (§\d+(?:\.\d+a?)?)\b", contract_text(), re.MULTILINE))
    cited: dict[str, set[str]] = {}
    for path in _text_files():
        for number in re.findall(r"CONTRACT (§\d+(?:\.\d+a?)?)", path.read_text("utf-8")):
            cited.setdefault(number, set()).add(str(path.relative_to(ROOT)))
    assert len(cited) >= 10
    assert {n: sorted(p) for n, p in cited.items() if n not in headings} == {}


def test_nothing_points_outside_the_repository():
    # Spelled in pieces so this file does not match itself.
    forbidden = ["../" + "shared", "SPEC" + ".md", "SPEC" + " §", "seed" + "/"]
    offenders = {
        str(path.relative_to(ROOT)): [word for word in forbidden if word in text]
        for path in _text_files()
        if (text := path.read_text("utf-8"))
    }
    assert {path: words for path, words in offenders.items() if words} == {}


def test_the_readme_links_every_document_inside_the_repository():
    readme = README.read_text(encoding="utf-8")
    for name in ("CONTRACT", "ARCHITECTURE", "OPERATIONS", "PERFORMANCE", "SECURITY"):
        assert f"(docs/{name}.md)" in readme, name
    for link in re.findall(r"\]\(([^)#]+)", readme):
        if "://" not in link:
            assert (ROOT / link).exists(), link
