"""Bad input: one line on stderr naming the file or field, exit status 2, no traceback."""
import subprocess
import sys

import pytest


def kd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kd_system.cli", *args], capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("kd-system: error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "malformed.yaml").write_text("env:\n  id: [unclosed\n")
    (tmp_path / "unknown.yaml").write_text("learner:\n  lrr: 0.1\n")
    corrupt = tmp_path / "corrupt_ckpt"
    corrupt.mkdir()
    (corrupt / "spec.json").write_text("{ truncated")
    return tmp_path


def test_unknown_env_id(tmp_path):
    assert_one_line_error(kd("run", "--set", "env.id=NoSuchGame-v9", "--set", f"head.runs_dir={tmp_path}"),
                          "env.id", "NoSuchGame-v9")
    assert not any(tmp_path.iterdir())  # nothing created on disk


def test_teacher_whose_spaces_do_not_match_the_env(tmp_path):
    assert_one_line_error(kd("run", "--set", "env.id=Acrobot-v1", "--set", f"head.runs_dir={tmp_path}"),
                          "teacher.checkpoint", "Acrobot-v1")


def test_lookahead_on_an_env_that_cannot_be_copied(tmp_path):
    assert_one_line_error(kd("run", "--config", "lunarlander-v3", "--set", "lookahead.enabled=true",
                             "--set", f"head.runs_dir={tmp_path}"),
                          "lookahead.enabled", "LunarLander-v3 does not copy exactly", "set it to false")
    assert not any(tmp_path.iterdir())


def test_malformed_yaml(bad_files):
    path = bad_files / "malformed.yaml"
    assert_one_line_error(kd("run", "--config", str(path)), str(path), "malformed YAML")


def test_unknown_key(bad_files):
    path = bad_files / "unknown.yaml"
    assert_one_line_error(kd("run", "--config", str(path)), str(path), "learner.lrr")


def test_unreachable_redis_masks_the_password(tmp_path):
    result = kd("run", "--set", "store.redis_url=redis://:hunter2@127.0.0.1:1/0", "--set", f"head.runs_dir={tmp_path}")
    assert_one_line_error(result, "cannot reach Redis", "store.redis_url")
    assert "hunter2" not in result.stderr
    assert not any(tmp_path.iterdir())


def test_missing_teacher_checkpoint(tmp_path):
    assert_one_line_error(kd("run", "--set", f"teacher.checkpoint={tmp_path}/absent"), "teacher.checkpoint", "absent")


def test_corrupt_teacher_checkpoint(bad_files):
    assert_one_line_error(kd("run", "--set", f"teacher.checkpoint={bad_files / 'corrupt_ckpt'}"),
                          "teacher.checkpoint", "corrupt")


def test_eval_missing_and_corrupt_checkpoint(bad_files):
    assert_one_line_error(kd("eval", str(bad_files / "absent")), "absent", "does not exist")
    assert_one_line_error(kd("eval", str(bad_files / "corrupt_ckpt")), "spec.json", "corrupt")


def test_resume_of_a_directory_that_is_not_a_run(tmp_path):
    assert_one_line_error(kd("run", "--resume", str(tmp_path)), str(tmp_path), "not a kd_system run directory")


def test_cpu_reservations_the_local_cluster_cannot_grant_are_refused_not_left_pending(tmp_path):
    # Ray would leave the evaluator pending forever and the run would hang in silence
    result = kd("run", "--set", "actors.num_cpus=40", "--set", f"head.runs_dir={tmp_path}")
    assert_one_line_error(result, "actors.num_cpus (40 x 2 actors)", "learner.num_cpus", "head.evaluator_num_cpus",
                          "lower them")


def test_runs_dir_that_is_a_file(tmp_path):
    (tmp_path / "runs").write_text("not a directory")
    assert_one_line_error(kd("run", "--set", f"head.runs_dir={tmp_path / 'runs'}"), "head.runs_dir", "is a file")


def test_eval_needs_at_least_one_episode(tmp_path):
    assert_one_line_error(kd("eval", "shipped-does-not-matter", "--episodes", "0"), "--episodes 0")


def test_a_run_refused_at_start_leaves_no_stub_run_directory(tmp_path):
    # checked once Ray is up (the cluster's CPUs), after the run directory was made: it is removed again
    result = kd("run", "--set", "actors.num_actors=64", "--set", "actors.num_cpus=0.25", "--set", f"head.runs_dir={tmp_path}")
    assert_one_line_error(result, "actors.num_cpus (0.25 x 64 actors)", "lower them")
    assert list(tmp_path.iterdir()) == []
