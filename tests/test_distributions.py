"""The three distributions as their users install them (pip, a fresh venv, a fresh clone).

- `pip install ./client` in a fresh virtual environment brings kombu and nothing of the
  registry (no SQLAlchemy, psycopg2 or docker), and messages sent from there are
  applied by a real worker;
- the wheel built from the root holds the registry and no demo tooling (simulator,
  fake engine); the demo's own wheel holds them and adds the `demo` command;
- `scripts/demo` works from a fresh clone.

These build virtual environments and wheels from the local package index: about a
minute each on a loaded machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
import zipfile
from pathlib import Path

import pytest
from demo_helpers import wait_for
from sqlalchemy import text

from molecule_registry_client import RegistryClient

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"sqlalchemy", "psycopg2", "psycopg2-binary", "docker", "alembic", "molecule-registry"}
PIP_TIMEOUT = 600


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=PIP_TIMEOUT, **kwargs
    )
    assert done.returncode == 0, f"{argv}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def _copy_tracked(source: Path, target: Path) -> Path:
    """The files git knows under `source`: what a clone holds, never a build leftover."""
    listed = _run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "."], cwd=source
    ).stdout.split()
    for name in listed:
        if (source / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)
    return target


def _installed(venv: Path) -> set[str]:
    out = _run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"]).stdout
    return {entry["name"].lower() for entry in json.loads(out)}


def _status(db, workspace_id: str) -> str | None:
    with db.connect() as conn:
        return conn.execute(
            text("SELECT status FROM workspaces WHERE id = :id"), {"id": workspace_id}
        ).scalar()


PRODUCER = textwrap.dedent(
    """
    import sys
    from molecule_registry_client import RegistryClient, RegistryRefused

    broker, backend, workspace_id, token = sys.argv[1:5]
    with RegistryClient(broker, result_backend=backend or None) as registry:
        if token == "-":
            token = registry.register(workspace_id, {"name": "from-a-fresh-venv"},
                                      delivery_mode="poll")
            try:
                registry.register(workspace_id, {"name": "thief"}, delivery_mode="poll",
                                  auth_token="not-the-token")
            except RegistryRefused as exc:
                print("refused", exc.status)
        registry.heartbeat(workspace_id, token, runtime_state="wedged")
    loaded = [m for m in ("sqlalchemy", "psycopg2", "docker", "registry") if m in sys.modules]
    print("loaded", loaded)
    """
)


def test_pip_install_client_in_a_fresh_venv_needs_nothing_of_the_registry(
    db, worker, test_env, tmp_path
):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])  # no --system-site-packages
    source = _copy_tracked(ROOT / "client", tmp_path / "client")
    python = str(venv / "bin" / "python")
    _run([python, "-m", "pip", "install", "-q", str(source)])
    installed = _installed(venv)
    assert "molecule-registry-client" in installed and "kombu" in installed
    assert installed & (HEAVY | {"celery"}) == set()

    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    broker = test_env["CELERY_BROKER_URL"]
    backend = test_env["CELERY_RESULT_BACKEND"]

    # kombu alone: a heartbeat (fire-and-forget) for a workspace registered here.
    with RegistryClient(broker, result_backend=backend) as here:
        ws = str(uuid.uuid4())
        token = here.register(ws, {"name": "registered-here"}, delivery_mode="poll")
    out = _run([python, str(script), broker, "", ws, token], cwd=tmp_path).stdout
    assert "loaded []" in out
    assert wait_for(lambda: _status(db, ws) == "degraded", timeout=30)

    # With the `results` extra (celery, to read replies): still none of the registry.
    _run([python, "-m", "pip", "install", "-q", f"{source}[results]"])
    installed = _installed(venv)
    assert "celery" in installed
    assert installed & HEAVY == set()
    fresh = str(uuid.uuid4())
    out = _run([python, str(script), broker, backend, fresh, "-"], cwd=tmp_path).stdout
    assert "refused unauthorized" in out
    assert "loaded []" in out
    assert wait_for(lambda: _status(db, fresh) == "degraded", timeout=30)


def _wheel(project: Path, out: Path) -> zipfile.ZipFile:
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(project)])
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


def test_the_root_wheel_holds_the_registry_and_no_demo_tooling(tmp_path):
    source = _copy_tracked(ROOT, tmp_path / "src")
    with _wheel(source, tmp_path / "root") as wheel:
        names = wheel.namelist()
    assert "celeryconfig.py" in names
    for required in (
        "registry/config.py",
        "registry/ingestion/heartbeats.py",
        "registry/board/static/index.html",
        "gateway/board.py",
        "tasks/base.py",
        "workers/app.py",
        "migrations/versions/0001_core_schema.py",
        "migrations/alembic.ini",
    ):
        assert required in names, required
    leaked = [
        n
        for n in names
        if n.startswith(("molecule_registry_demo/", "molecule_registry_client/", "tests/"))
        or any(word in n for word in ("simulator", "fake_engine", "processes.py"))
    ]
    assert leaked == []

    with _wheel(source / "demo", tmp_path / "demo") as wheel:
        demo_names = wheel.namelist()
        (entry_points,) = [n for n in demo_names if n.endswith("entry_points.txt")]
        entry_text = wheel.read(entry_points).decode()
    assert "molecule_registry_demo/simulator/fake_engine.py" in demo_names
    assert "[molecule_registry.cli]" in entry_text
    assert "demo = molecule_registry_demo.cli" in entry_text


def test_scripts_demo_works_from_a_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(ROOT), str(clone)])
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    done = _run([str(clone / "scripts" / "demo"), "--help"], cwd=clone, env=env)
    assert "--fleet" in done.stdout
    installed = _installed(clone / ".venv")
    assert {"molecule-registry", "molecule-registry-client", "molecule-registry-demo"} <= installed
