"""The environment is the committed lock, and a lock that no longer matches pyproject.toml is
refused (what `make lock-check`, run by CI, does)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UV = ROOT / ".tools" / "bin" / "uv"


def _lock() -> dict:
    return tomllib.loads((ROOT / "uv.lock").read_text())


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_installed_packages_are_the_locked_versions():
    # a universal lock may hold two versions of a package for different Pythons
    locked: dict[str, set[str]] = {}
    for p in _lock()["package"]:
        if "version" in p:
            locked.setdefault(_norm(p["name"]), set()).add(p["version"])
    installed = {_norm(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    # what the issue was about: Prefect and SQLAlchemy come from the lock, not from the day
    for name in ("prefect", "sqlalchemy", "dask", "distributed", "flask", "gunicorn"):
        assert installed[name] in locked[name], name
    wrong = {n: (v, locked[n]) for n, v in installed.items() if n in locked and v not in locked[n]}
    assert not wrong, f"installed versions differ from uv.lock: {wrong}"


def test_every_locked_wheel_and_sdist_has_a_hash():
    for pkg in _lock()["package"]:
        for art in [*pkg.get("wheels", []), *([pkg["sdist"]] if "sdist" in pkg else [])]:
            assert art.get("hash", "").startswith("sha256:"), (pkg["name"], art)


@pytest.mark.skipif(not UV.exists(), reason="uv is installed by `make setup-test`")
def test_lock_check_refuses_a_lock_that_does_not_match_pyproject(tmp_path):
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    env = {"UV_PYTHON_DOWNLOADS": "never", "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([str(UV), "lock", "--check", "--offline"], cwd=tmp_path, capture_output=True,
                        text=True, env={**env, "HOME": str(Path.home())})
    assert ok.returncode == 0, ok.stderr
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"rich>=13",', '"rich>=13",\n  "six>=1.16",'))
    # a changed pyproject is resolved again before uv can compare: that reads the registry's
    # index (as `make setup` does), which an offline uv has only if an earlier `uv lock` left it
    # in the cache
    # (the machine's own certificate and proxy settings are kept for that)
    net = {k: v for k, v in os.environ.items() if k.endswith(("_PROXY", "_proxy", "CERT_FILE", "CERT_DIR"))}
    bad = subprocess.run([str(UV), "lock", "--check"], cwd=tmp_path, capture_output=True,
                         text=True, env={**net, **env, "HOME": str(Path.home())}, timeout=300)
    assert bad.returncode != 0
    assert "uv lock" in bad.stderr  # it says how to refresh the lock
