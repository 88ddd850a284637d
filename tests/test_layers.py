"""The import layers of docs/DESIGN.md hold, checked by import-linter's contracts in
pyproject.toml: config, catalog, tasks below flows; flows below the web app and the CLI; no
package imports the test suite; only the web app imports Flask; no import circles."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("config", "catalog", "tasks", "flows", "streaming_app", "deployments", "bench")
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_tree_keeps_its_layers():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "BROKEN" not in out.stdout


def test_an_upward_import_or_a_circle_breaks_the_check(tmp_path):
    for name in (*PACKAGES, "tests"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    # a task that reaches up into the web app
    probe = tmp_path / "tasks" / "probe.py"
    probe.write_text(probe.read_text() + "\nfrom streaming_app.errors import error_response  # noqa\n")
    out = _lint(tmp_path)
    assert out.returncode != 0
    assert "tasks.probe -> streaming_app.errors" in out.stdout
    probe.write_text(probe.read_text().replace("from streaming_app.errors import error_response  # noqa\n", ""))
    # a circle inside a layer
    ladder = tmp_path / "tasks" / "ladder.py"
    ladder.write_text(ladder.read_text() + "\nfrom tasks import encode  # noqa\n")
    out = _lint(tmp_path)
    assert out.returncode != 0
    assert "No cycles are allowed in tasks" in out.stdout
