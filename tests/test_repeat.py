"""``kd-system repeat``: one config under several seeds, tabulated."""
import csv
import json

import pytest
import yaml

from kd_system.experiments.repeats import seed_command, seed_rows, write_seed_table

from test_e2e import kd


def _task(env: str, score: float, low: float, high: float) -> dict:
    return {"env_id": env, "normalized_score": score, "normalized_score_ci95": [low, high],
            "agreement_teacher_states": 0.99, "agreement_student_states": 0.98,
            "disagreement_margin_teacher_states": 0.0123 if env == "Acrobot-v1" else float("nan")}


def _summary(score: float, tasks: list[dict]) -> dict:
    return {"env_id": "+".join(t["env_id"] for t in tasks), "normalized_score": score,
            "normalized_score_ci95": [score - 0.001, score + 0.001], "agreement_teacher_states": 0.985,
            "agreement_student_states": 0.975, "env_steps": 50_000, "learner_updates": 4_000, "wall_s": 101.7,
            "stop_reason": "target score 1.0 reached", "tasks": tasks}


def test_seed_table_reports_each_seed_and_how_many_reach_the_teacher(tmp_path):
    for seed, score in ((0, 1.0002), (1, 0.9996)):
        run_dir = tmp_path / "runs" / f"seed-{seed}"
        run_dir.mkdir(parents=True)
        tasks = [_task("CartPole-v1", 1.0, 1.0, 1.0), _task("Acrobot-v1", 2 * score - 1.0, 0.99, 1.01)]
        (run_dir / "summary.json").write_text(json.dumps(_summary(score, tasks)))
    rows = seed_rows(tmp_path, [0, 1, 2])  # seed 2 never ran: no row
    assert [row["seed"] for row in rows] == [0, 1]
    write_seed_table(rows, tmp_path / "results.md", tmp_path / "results.csv")
    markdown = (tmp_path / "results.md").read_text()
    assert "| seed | mean normalized score [95% CI] | CartPole-v1 [95% CI] | Acrobot-v1 [95% CI] |" in markdown
    assert "| 0 | 1.0002 [0.9992, 1.0012] | 1.0000 [1.0000, 1.0000] | 1.0004 [0.9900, 1.0100] |" in markdown
    assert "| 1 | 0.9996 [0.9986, 1.0006] | 1.0000 [1.0000, 1.0000] | 0.9992 [0.9900, 1.0100] | 98.50% | 97.50% | – / 0.012 | 50,000 |" in markdown
    assert ("Over 2 seeds: mean 0.9999, lowest 0.9996, highest 1.0002; 1 of 2 at or above 1.0000 and 2 of 2 at "
            "1.00 to two decimals; lowest single task 0.9992.") in markdown
    lines = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [(line["seed"], line["env"]) for line in lines] == [
        ("0", "mean"), ("0", "CartPole-v1"), ("0", "Acrobot-v1"), ("1", "mean"), ("1", "CartPole-v1"), ("1", "Acrobot-v1")]
    assert lines[5]["normalized_score"] == "0.99920" and lines[5]["ci95_low"] == "0.99000"


def test_seed_table_shows_rollout_steps_of_lookahead_runs(tmp_path):
    run_dir = tmp_path / "runs" / "seed-0"
    run_dir.mkdir(parents=True)
    task = _task("Acrobot-v1", 1.004, 0.998, 1.010)
    (run_dir / "summary.json").write_text(json.dumps({**_summary(1.004, [task]), **task, "rollout_steps": 7_200_000}))
    write_seed_table(seed_rows(tmp_path, [0]), tmp_path / "results.md", tmp_path / "results.csv")
    markdown = (tmp_path / "results.md").read_text()
    assert "| env steps | rollout steps | learner updates |" in markdown
    assert "| 50,000 | 7,200,000 | 4,000 |" in markdown


def test_each_seed_is_a_run_with_its_own_seeds_and_the_shared_overrides(tmp_path):
    command = seed_command("multitask-classic", 7, tmp_path, ["head.max_updates=10"])
    assert command[command.index("--config") + 1] == "multitask-classic"
    sets = [command[i + 1] for i, word in enumerate(command) if word == "--set"]
    assert sets == [f"head.runs_dir={tmp_path}", "head.run_name=seed-7", "head.seed=7", "learner.seed=7",
                    "head.max_updates=10"]


@pytest.mark.slow
def test_repeat_runs_every_seed_writes_the_report_and_skips_finished_seeds(tmp_path):
    config = tmp_path / "two-tasks.yaml"
    config.write_text("""
tasks:
  - {env: CartPole-v1, teacher: "shipped:cartpole-v1"}
  - {env: Acrobot-v1, teacher: "shipped:acrobot-v1"}
student: {hidden: [32, 32]}
actors: {num_actors: 1, envs_per_actor: 4}
limiter: {min_size_to_sample: 500, samples_per_insert: 4}  # 64 env steps per update: time for evaluations
head: {target_score: null, snapshot_every_updates: 30, snapshot_every_s: 1000, eval_episodes: 3,
       final_eval_episodes: 5, max_updates: 240, max_wall_s: 150}
""")
    out = tmp_path / "out"
    result = kd("repeat", "--config", str(config), "--seeds", "0", "1", "--out", str(out), timeout=500)
    assert result.returncode == 0, result.stderr[-2000:] + result.stdout[-2000:]
    assert "[seed 2/2] " in result.stdout and "FAILED" not in result.stdout
    for seed in (0, 1):
        saved = yaml.safe_load((out / "runs" / f"seed-{seed}" / "config.yaml").read_text())
        assert saved["head"]["seed"] == seed and saved["learner"]["seed"] == seed
        summary = json.loads((out / "runs" / f"seed-{seed}" / "summary.json").read_text())
        assert summary["learner_updates"] == 240  # learner calls end at max_updates, not a second past it
    assert "Over 2 seeds" in (out / "results.md").read_text()
    assert len(list(csv.DictReader(open(out / "results.csv")))) == 6  # mean + 2 tasks, per seed
    assert (out / "curves-seeds.png").stat().st_size > 0
    again = kd("repeat", "--config", str(config), "--seeds", "0", "1", "--out", str(out), "--only", "runs")
    assert again.returncode == 0 and again.stdout.count("done earlier, skipped") == 2
