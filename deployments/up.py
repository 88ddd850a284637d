"""`vodflow up`: start the stack on this machine (for now the web app; uploads dispatch ingest
runs as local processes)."""

from __future__ import annotations

import subprocess

from rich.console import Console

console = Console()


def run_stack(settings) -> int:
    from catalog.db import get_engine
    from deployments.cli import gunicorn_command

    get_engine()
    console.print(f"[bold]vodflow[/bold] web app on {settings.public_url}/  (data in {settings.data_dir})")
    proc = subprocess.Popen(gunicorn_command(settings))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()
