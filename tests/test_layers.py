"""The import layers of docs/DESIGN.md hold, checked by import-linter's contracts in
pyproject.toml: config, catalog, tasks below flows; flows below the web app and the CLI; no
package imports the test suite; only the web app imports Flask; no import circles. Imports sit
at the top of their module unless a comment says why one waits inside a function."""

from __future__ import annotations

import ast
import io
import os
import shutil
import subprocess
import sys
import tokenize
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


# imports inside functions that have not been moved to the top of their module yet
NOT_YET_MOVED: dict[str, set[str]] = {}


def _silent_function_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of each import inside a function that no comment explains. A comment on
    the import's line, on any line of the run of imports it belongs to, or on the line just
    above that run explains it."""
    comments = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    found = []

    def runs(statements):
        run: list[ast.stmt] = []
        for stmt in [*statements, None]:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                run.append(stmt)
                continue
            if run:
                yield run
                run = []

    def visit(node, in_function: bool):
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            block = getattr(node, field, None)
            if not isinstance(block, list):
                continue
            if in_function:
                for run in runs(block):
                    lines = range(run[0].lineno - 1, run[-1].end_lineno + 1)
                    if not comments.intersection(lines):
                        found.extend((i.lineno, i.module if isinstance(i, ast.ImportFrom) else i.names[0].name)
                                     for i in run)
            for child in block:
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(source), False)
    return found


def test_imports_inside_functions_say_why():
    silent = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            for line, module in _silent_function_imports(path.read_text()):
                if module.split(".")[0] not in NOT_YET_MOVED.get(name, ()):
                    silent.append(f"{name}:{line} imports {module}")
    assert not silent, ("move these imports to the top of their module, or say on the line (or the "
                        "line above) why they wait: start-up cost, an optional dependency, settings "
                        "read at import\n" + "\n".join(silent))


def test_the_import_check_sees_a_silent_import():
    source = """
import os


def quiet():
    import json

    return json


def explained():
    # deferred: heavy, and only this command uses it
    import csv
    from decimal import Decimal

    return csv, Decimal


class Holder:
    def method(self):
        if os.sep:
            from fractions import Fraction  # optional: not every install has it
            import gzip
            return Fraction, gzip
        try:
            import lzma
        except ImportError:
            return None
        return lzma
"""
    assert _silent_function_imports(source) == [(6, "json"), (26, "lzma")]
