"""`kd-system bench`: every section runs and reports positive rates with ratios that agree with
them; bad input is one line on stderr. No timing asserts: rates depend on the machine."""
import json

import pytest

from kd_system.bench.context import shipped_teacher_dir
from kd_system.bench.report import TARGETS
from kd_system.cli import main


def bench(tmp_path, *args: str) -> dict:
    out = tmp_path / "bench.json"
    assert main(["bench", "--json", str(out), *args]) == 0
    return json.loads(out.read_text())


def assert_ratio(result: dict, ratio: str, numerator: str, denominator: str) -> None:
    assert result[numerator] > 0 and result[denominator] > 0
    assert result[ratio] == pytest.approx(result[numerator] / result[denominator])


def check_store(store: dict) -> None:
    assert_ratio(store, "write_vs_raw", "write_states_per_s", "raw_set_pipelined_states_per_s")
    assert_ratio(store, "sample_vs_raw", "sample_states_per_s", "raw_get_pipelined_states_per_s")
    assert_ratio(store, "write_vs_raw_unpipelined", "write_states_per_s", "raw_set_states_per_s")
    assert_ratio(store, "sample_vs_raw_unpipelined", "sample_states_per_s", "raw_get_states_per_s")
    assert_ratio(store, "bytes_vs_raw", "bytes_per_state", "raw_bytes_per_state")


def check_targets(figures: dict) -> None:
    for key, (section, _, _) in TARGETS.items():
        assert (section in figures) == (key in figures["targets"]) == (key in figures["meets"])
        if key in figures["meets"]:
            assert isinstance(figures["meets"][key], bool)


def test_store_and_learner_sections_on_cartpole(tmp_path, redis_url, capsys):
    figures = bench(tmp_path, "--env", "CartPole-v1", "--seconds", "0.3", "--only", "learner,store",
                    "--redis-url", redis_url)
    assert [k for k in figures if k in ("actor", "store", "learner", "scaling")] == ["store", "learner"]
    assert figures["setup"]["teacher"] == f"shipped checkpoint {shipped_teacher_dir('CartPole-v1')}"
    check_store(figures["store"])
    learner = figures["learner"]
    assert_ratio(learner, "fed_vs_in_memory", "fed_updates_per_s", "in_memory_updates_per_s")
    assert learner["in_memory_states_per_s"] == pytest.approx(learner["in_memory_updates_per_s"] * learner["batch_size"])
    both = figures["store_vs_learner"]
    assert both["sample_states_per_s"] == figures["store"]["sample_states_per_s"]
    assert_ratio(both, "sample_vs_learner", "sample_states_per_s", "learner_states_per_s")
    check_targets(figures)
    assert figures["machine"]["cores"] >= 1
    table = capsys.readouterr().out
    assert "updates/s fed from the store" in table and "bytes/state" in table and "scaling" not in table


def test_set_overrides_the_measured_learner(tmp_path, redis_url):
    """--set reaches the components a section builds, as a GPU check's fp32-vs-bf16 pair needs."""
    figures = bench(tmp_path, "--env", "CartPole-v1", "--seconds", "0.2", "--only", "learner", "--redis-url", redis_url,
                    "--set", "learner.batch_size=64", "--set", "learner.precision=fp32")
    assert figures["learner"]["batch_size"] == 64 and figures["learner"]["precision"] == "fp32"
    assert figures["setup"]["overrides"] == ["learner.batch_size=64", "learner.precision=fp32"]


def test_atari_store_section_with_a_random_nature_teacher(tmp_path, redis_url):
    figures = bench(tmp_path, "--seconds", "0.2", "--num-envs", "4", "--only", "store", "--redis-url", redis_url)
    assert figures["setup"]["env_id"] == "ALE/Pong-v5"  # the default env
    if not shipped_teacher_dir("ALE/Pong-v5").is_dir():
        assert figures["setup"]["teacher"].startswith("random Nature-CNN")
        assert figures["setup"]["teacher_params"] == 1_687_206
    check_store(figures["store"])
    assert figures["store"]["raw_bytes_per_state"] == 4 * 84 * 84 + 6 * 4 + 4  # uint8 stack, float32 Q-values, int32 action
    codecs = figures["store"]["codecs"]
    assert {"lz4", "zstd-1", "zstd-3", "lz4, newest frame only (estimate)"} <= set(codecs)
    for name in ("lz4", "zstd-1", "zstd-3"):
        assert 0 < codecs[name]["obs_bytes_per_state"] < 4 * 84 * 84 and codecs[name]["decode_states_per_s"] > 0
    check_targets(figures)


@pytest.mark.slow
def test_every_section_on_cartpole_with_its_own_redis_and_ray(tmp_path, capsys):
    figures = bench(tmp_path, "--env", "CartPole-v1", "--seconds", "0.5")
    actor = figures["actor"]
    assert_ratio(actor, "actor_vs_ideal", "actor_states_per_s", "ideal_states_per_s")
    assert_ratio(actor, "actor_vs_naive", "actor_states_per_s", "naive_states_per_s")
    fractions = actor["actor_time_fractions"]
    assert set(fractions) == {"env", "teacher", "store", "other"}
    assert all(share >= 0 for share in fractions.values()) and sum(fractions.values()) == pytest.approx(1.0, abs=1e-6)
    check_store(figures["store"])
    scaling = figures["scaling"]
    assert scaling["actors"] == [1, 2, 4] and all(rate > 0 for rate in scaling["states_per_s"])
    assert scaling["vs_one_actor"] == pytest.approx([rate / scaling["states_per_s"][0] for rate in scaling["states_per_s"]])
    check_targets(figures)
    table = capsys.readouterr().out
    assert "in-process ideal" in table and "naive loop" in table and "4 actors" in table


@pytest.mark.parametrize("args, fragments", [
    (["--only", "actor,bogus"], ["--only", "bogus"]),
    (["--env", "NoSuchGame-v9"], ["--env", "NoSuchGame-v9"]),
    (["--env", "CartPole-v1", "--teacher", "/nonexistent/teacher"], ["--teacher", "/nonexistent/teacher"]),
    (["--env", "Acrobot-v1", "--teacher", str(shipped_teacher_dir("CartPole-v1"))], ["--teacher", "Acrobot-v1"]),
    (["--env", "CartPole-v1", "--seconds", "0"], ["--seconds"]),
    (["--env", "CartPole-v1", "--set", "learner.precision=fp64"], ["learner.precision"]),
])
def test_bad_input_is_one_line(args, fragments, capsys):
    assert main(["bench", *args]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kd-system: error:"), captured.err
    for fragment in fragments:
        assert fragment in lines[0]
    assert captured.out == ""
