"""A password given in store.redis_url never reaches the run directory: the saved config names
env:KD_REDIS_URL, and a resumed run reads the URL from the environment again."""
from kd_system.checkpoints.run_dir import RunDirectory
from kd_system.config import load_config
from kd_system.launch.secrets import with_secrets


def test_a_password_in_the_url_is_not_written_and_resume_reads_it_from_the_environment(tmp_path, monkeypatch, capsys):
    url = "redis://:s3cret-pw@10.0.0.5:6379/0"
    config = load_config(None, [f"store.redis_url={url}"])
    run = RunDirectory.create(str(tmp_path / "runs"), "r1", config)
    saved = run.config_path.read_text()
    assert "s3cret-pw" not in saved and "env:KD_REDIS_URL" in saved
    note = capsys.readouterr().err
    assert "KD_REDIS_URL" in note and "s3cret-pw" not in note
    assert not any("s3cret-pw" in p.read_text(errors="ignore") for p in run.root.rglob("*") if p.is_file())

    monkeypatch.setenv("KD_REDIS_URL", url)
    _, resumed = RunDirectory.open_existing(str(run.root), [])
    assert with_secrets(resumed).store.redis_url == url


def test_a_url_without_a_password_is_kept_as_written(tmp_path):
    config = load_config(None, ["store.redis_url=redis://10.0.0.5:6379/0"])
    run = RunDirectory.create(str(tmp_path / "runs"), "r1", config)
    assert "redis://10.0.0.5:6379/0" in run.config_path.read_text()
