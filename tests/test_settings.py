import pytest

from config.settings import SettingsError, load_settings


def test_defaults_follow_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VODFLOW_DATA_DIR", str(tmp_path / "d"))
    s = load_settings()
    assert s.storage_url == f"file://{tmp_path / 'd' / 'storage'}"
    assert s.database_url == f"sqlite:///{tmp_path / 'd' / 'vodflow.db'}"
    assert s.segment_seconds == 6 and s.keyframe_seconds == 2


def test_toml_file_is_read_and_env_wins(tmp_path, monkeypatch):
    cfg = tmp_path / "vodflow.toml"
    cfg.write_text('web_port = 9123\nsegment_seconds = 4\n')
    monkeypatch.setenv("VODFLOW_CONFIG", str(cfg))
    assert load_settings().web_port == 9123
    monkeypatch.setenv("VODFLOW_WEB_PORT", "9200")
    s = load_settings()
    assert s.web_port == 9200 and s.segment_seconds == 4


@pytest.mark.parametrize("name,value,needle", [
    ("VODFLOW_WEB_PORT", "eighty", "VODFLOW_WEB_PORT"),
    ("VODFLOW_MAX_UPLOAD_BYTES", "-5", "VODFLOW_MAX_UPLOAD_BYTES"),
    ("VODFLOW_SEGMENT_SECONDS", "5", "whole multiple"),
])
def test_bad_values_name_the_variable(monkeypatch, name, value, needle):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as exc:
        load_settings()
    assert needle in str(exc.value)


def _vodflow(*args: str, env: dict, prefix: tuple[str, ...] = ()) -> "subprocess.CompletedProcess":
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    return subprocess.run([*prefix, sys.executable, *args], env=env, cwd=root, capture_output=True,
                          text=True, timeout=120)


def test_a_prefect_api_set_only_in_vodflow_toml_is_used_everywhere(prefect_api, tmp_path):
    """One lookup: the file's PREFECT_API_URL reaches the health checks and the environment
    that Prefect's client and child processes read."""
    import json
    import os

    cfg = tmp_path / "vodflow.toml"
    cfg.write_text(f'PREFECT_API_URL = "{prefect_api}"\n')
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(VODFLOW_CONFIG=str(cfg), VODFLOW_DATA_DIR=str(tmp_path / "var"))
    out = _vodflow("-m", "deployments.cli", "status", "--json", env=env)
    report = json.loads(out.stdout)
    assert report["checks"]["prefect"] == {**report["checks"]["prefect"], "ok": True, "url": prefect_api}
    probe = ("from config.settings import prefect_api_url; import os\n"
             "from prefect.settings import get_current_settings\n"
             "print(prefect_api_url(), os.environ['PREFECT_API_URL'], get_current_settings().api.url)")
    assert _vodflow("-c", probe, env=env).stdout.split() == [prefect_api] * 3
    # the environment still wins over the file
    env["PREFECT_API_URL"] = "http://127.0.0.1:9/api"
    assert _vodflow("-c", probe, env=env).stdout.split()[0] == "http://127.0.0.1:9/api"


def test_cores_are_counted_from_the_cpu_affinity(tmp_path):
    """Pinned to one core (a container's cpuset, taskset), nothing sizes itself to the machine."""
    import os

    probe = ("from config.settings import available_cores, load_settings\n"
             "from flows.cluster import local_cluster_kwargs\n"
             "from tasks.encode import worker_threads\n"
             "from deployments.up import worker_sizing\n"
             "from deployments.cli import gunicorn_command\n"
             "cmd = gunicorn_command(load_settings())\n"
             "print(available_cores(), local_cluster_kwargs()['n_workers'], worker_threads(),\n"
             "      worker_sizing(load_settings())[0], cmd[cmd.index('--workers') + 1])")
    env = {**os.environ, "VODFLOW_DATA_DIR": str(tmp_path / "var"), "VODFLOW_TASK_SLOTS": "1"}
    out = _vodflow("-c", probe, env=env, prefix=("taskset", "-c", "0"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1", "1", "1", "2"]
