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
