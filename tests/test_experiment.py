"""`kd-system experiment`: grid parsing, eval records -> env steps to 0.95, the table writer, and a
tiny grid end to end (real runs, real RLlib baseline)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kd_system.errors import ConfigError
from kd_system.experiments.curves import eval_curve, first_reaching, read_records
from kd_system.experiments.grid import Cell, load_grid, student_shape
from kd_system.experiments.runner import cell_command, scratch_path
from kd_system.experiments.table import cell_row, write_csv, write_markdown


def kd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kd_system.cli", *args], capture_output=True, text=True, timeout=timeout)


def write_metrics(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


T0 = 1_000_000.0
RECORDS = [  # a run's clock starts at T0; the learner does 100 updates/s and the actors 400 steps/s
    {"kind": "baselines", "step": 0, "time": T0 + 1},
    {"kind": "progress", "step": 100, "time": T0 + 1, "elapsed_s": 1.0, "env_steps": 900},
    {"kind": "progress", "step": 300, "time": T0 + 3, "elapsed_s": 3.0, "env_steps": 1700},
    # the eval of the snapshot at update 200 finishes later, when the actors are at 1700 steps
    {"kind": "eval", "step": 200, "time": T0 + 3.2, "updates": 200, "env_steps": 1700, "normalized_score": 0.5},
    {"kind": "progress", "step": 500, "time": T0 + 5, "elapsed_s": 5.0, "env_steps": 2500},
    {"kind": "eval", "step": 500, "time": T0 + 5.5, "updates": 500, "env_steps": 2600, "normalized_score": 0.97},
    {"kind": "eval", "step": 600, "time": T0 + 6.5, "updates": 600, "env_steps": 2900, "normalized_score": 1.0},
]


def test_eval_curve_places_each_snapshot_at_the_env_steps_that_produced_it(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", RECORDS)
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "eval", "trunc')  # a killed run's partial last line is ignored
    curve = eval_curve(read_records(tmp_path / "metrics.jsonl"))
    assert [(p.updates, p.env_steps, p.normalized_score) for p in curve] == [
        (200, 1300, 0.5),  # interpolated between (100, 900) and (300, 1700), not the record's 1700
        (500, 2500, 0.97),  # exactly at a progress record
        (600, 2900, 1.0),  # after the last progress record: the eval record's own figures
    ]
    # wall seconds count from the first env step (elapsed 1.0 s here), not from Ray's start-up
    assert curve[0].wall_s == pytest.approx(1.0) and curve[2].wall_s == pytest.approx(5.5)
    reached = first_reaching(curve, 0.95)
    assert (reached.env_steps, reached.wall_s) == (2500, 4.0)
    assert first_reaching(curve, 1.01) is None


def test_table_rows_markdown_and_csv(tmp_path):
    run_dir = tmp_path / "cartpole-v1-7pct-kl-student"
    run_dir.mkdir()
    write_metrics(run_dir / "metrics.jsonl", RECORDS)
    (run_dir / "summary.json").write_text(json.dumps({
        "student_params": 4610, "student_param_fraction": 4610 / 67586, "normalized_score": 1.0,
        "normalized_score_ci95": [0.99, 1.01], "env_steps": 3000, "wall_s": 7.0}))
    cell = Cell("CartPole-v1", 0.07, "kl", "student")
    reached = cell_row(cell, run_dir, {"env_steps_to_threshold": 30_000, "env_steps_end": 31_000}, 0.95)
    missed = cell_row(cell, run_dir, {"env_steps_to_threshold": None, "env_steps_end": 100_000}, 0.95)
    assert reached["steps_to_095"] == 2500 and reached["scratch_ratio"] == "12.0"
    assert missed["scratch_ratio"] == ">40.0" and missed["scratch_note"] == "not reached within 100000 steps"
    assert cell_row(cell, tmp_path / "missing", None, 0.95) is None
    write_markdown([reached, missed], tmp_path / "results.md")
    lines = (tmp_path / "results.md").read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("| env | student params | % of teacher")
    assert "| CartPole-v1 | 4,610 | 6.82% | kl | student | 1.000 | [0.990, 1.010] | 2,500 | 4.0 |" in lines[2]
    assert "not reached within 100000 steps | >40.0 |" in lines[3]
    write_csv([reached, missed], tmp_path / "results.csv")
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert rows[0]["steps_to_095"] == "2500" and rows[0]["scratch_steps_to_095"] == "30000"
    assert rows[1]["scratch_steps_to_095"] == "" and rows[1]["final_ci95"] == "0.9900;1.0100"
    assert rows[0]["reached_at_first_eval"] == "False"
    # the baseline's best evaluation within its budget, NaN evaluations (teacher = random) skipped
    curve = [{"normalized_score": float("nan")}, {"normalized_score": 0.31}, {"normalized_score": 0.2}]
    short = cell_row(cell, run_dir, {"env_steps_to_threshold": None, "env_steps_end": 200_000, "curve": curve}, 0.95)
    assert short["scratch_best"] == 0.31 and reached["scratch_best"] is None


def test_student_sizes_stay_within_the_share_of_the_teacher():
    shape = student_shape("CartPole-v1", 0.04)
    assert shape.network["hidden"] == [48, 48] and shape.params == 2690 and shape.teacher_params == 67586
    assert shape.overrides() == ["student.hidden=[48,48]"]
    for env_id in ("Acrobot-v1", "LunarLander-v3"):
        shape = student_shape(env_id, 0.07)
        assert shape.params <= 0.07 * shape.teacher_params
        wider = student_shape(env_id, (shape.params + 200) / shape.teacher_params)
        assert wider.network["hidden"][0] > shape.network["hidden"][0]  # and it is the widest that fits


def test_atari_students_are_rusus_cnns_within_the_share_of_the_teacher():
    # the shipped Breakout teacher is a Nature CNN; Rusu's sizes are nominal, so the nearest is taken
    shapes = {size: student_shape("ALE/Breakout-v5", size) for size in (0.25, 0.07, 0.04)}
    assert {size: shape.network["preset"] for size, shape in shapes.items()} == {
        0.25: "rusu-25", 0.07: "rusu-7", 0.04: "rusu-4"}
    assert [round(shape.params / shape.teacher_params, 3) for shape in shapes.values()] == [0.252, 0.066, 0.036]
    assert shapes[0.07].overrides() == ["student.preset=rusu-7"]
    cell = Cell("ALE/Breakout-v5", 0.07, "kl", "student")
    assert cell.name == "breakout-v5-7pct-kl-student"
    command = cell_command(load_grid("atari"), cell, Path("runs"))
    assert command[command.index("--config") + 1] == "breakout-v5" and "student.preset=rusu-7" in command
    assert scratch_path(Path("out"), "ALE/Breakout-v5", 0.07) == Path("out/scratch/breakout-v5-7pct-dqn.json")
    with pytest.raises(ConfigError, match="too small for any Rusu CNN"):
        student_shape("ALE/Breakout-v5", 0.01)  # rusu-4 (3.6%) is too far off 1%


@pytest.mark.parametrize("text, fragments", [
    ("groups: [{envs: [CartPole-v1], sizes: [0.07], losses: [kl], acting: [nobody]}]", ["groups[0].acting", "nobody"]),
    ("groups: [{envs: [Pong-v9], sizes: [0.07], losses: [kl], acting: [teacher]}]", ["groups[0].envs", "Pong-v9"]),
    ("groups: [{envs: [CartPole-v1], sizes: [7], losses: [kl], acting: [teacher]}]", ["groups[0].sizes"]),
    ("groups: [{envs: [CartPole-v1], sizes: [0.07], losses: [klx], acting: [teacher]}]", ["groups[0].losses"]),
    ("groups: []", ["groups"]),
    ("groups: [{envs: [CartPole-v1]}]\nbudget: 3", ["unknown key budget"]),
    ("groups: [{envs: [CartPole-v1], sizes: [0.07], losses: [kl], acting: [teacher]}]\nscratch: {steps: 3}", ["scratch"]),
    ("groups: [unclosed", ["malformed YAML"]),
])
def test_bad_grid_files_name_the_file_and_field(tmp_path, text, fragments):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_grid(path)
    for fragment in [str(path), *fragments]:
        assert fragment in str(error.value)


def test_bad_grid_is_one_line_exit_2(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("groups: [{envs: [CartPole-v1], sizes: [0.07], losses: [kl], acting: [nobody]}]\n")
    result = kd("experiment", "--grid", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "grid.yaml" in result.stderr and "acting" in result.stderr
    result = kd("experiment", "--envs", "CartPole-v1", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "--sizes" in result.stderr


def test_shipped_grids_parse():
    grid = load_grid("classic_control")
    assert len(grid.cells) == 21 and grid.scratch_sizes == (0.07,)
    atari = load_grid("atari")
    assert {cell.env_id for cell in atari.cells} == {"ALE/Breakout-v5"} and atari.scratch_envs == ("ALE/Breakout-v5",)


@pytest.mark.slow
def test_tiny_grid_end_to_end_and_resume(tmp_path):
    grid = tmp_path / "tiny.yaml"
    grid.write_text("""
settings: [limiter.min_size_to_sample=500, limiter.samples_per_insert=64, limiter.error_buffer=16384,
           head.snapshot_every_updates=50, head.eval_episodes=3, head.final_eval_episodes=3,
           head.max_updates=150, head.max_wall_s=60, head.target_score=null, actors.num_actors=1]
groups: [{envs: [CartPole-v1], sizes: [0.04], losses: [kl], acting: [student]}]
scratch: {sizes: [0.04], max_env_steps: 1000, eval_every_steps: 500, eval_episodes: 2}
""")
    out = tmp_path / "out"
    result = kd("experiment", "--grid", str(grid), "--out", str(out), timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[cell 1/1] cartpole-v1-4pct-kl-student: start" in result.stdout
    assert "[scratch 1/1] cartpole-v1-4pct-dqn: finished" in result.stdout
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 1 and rows[0]["student_params"] == "2690" and int(rows[0]["env_steps_end"]) >= 500
    scratch = json.loads((out / "scratch" / "cartpole-v1-4pct-dqn.json").read_text())
    assert scratch["env_steps_end"] >= 1000 and scratch["curve"][0]["env_steps"] > 0
    for name in ("results.md", "steps-to-095.png", "curves-cartpole-v1.png"):
        assert (out / name).stat().st_size > 0
    again = kd("experiment", "--grid", str(grid), "--out", str(out), "--only", "cells", "scratch")
    assert again.returncode == 0 and again.stdout.count("done earlier, skipped") == 2


def test_plots_draw_each_sizes_scratch_baseline(tmp_path, monkeypatch):
    from matplotlib.axes import Axes
    from kd_system.experiments import plots
    grid = load_grid("pong")
    cell = grid.cells[0]
    (tmp_path / "runs" / cell.name).mkdir(parents=True)
    write_metrics(tmp_path / "runs" / cell.name / "metrics.jsonl", RECORDS)
    for size in (0.25, 0.07):
        path = scratch_path(tmp_path, "ALE/Pong-v5", size)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"curve": [{"env_steps": 10_000, "normalized_score": 0.1},
                                              {"env_steps": 20_000, "normalized_score": 0.2}]}))
    labels: list[str] = []
    plot = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **k: (labels.append(k.get("label")), plot(self, *a, **k))[1])
    written = plots.plot_curves(grid, tmp_path, tmp_path)
    assert [p.name for p in written] == ["curves-pong-v5.png"] and written[0].is_file()
    assert {"DQN from scratch, 25%", "DQN from scratch, 7%"} <= set(labels)
    assert f"teacher-driven, {cell.size * 100:g}%" in labels
    rows = [{"env": "ALE/Pong-v5", "teacher_pct": pct, "student_params": params, "loss": "kl", "acting": "teacher",
             "steps_to_095": 5_000, "scratch_steps_to_095": None, "scratch_note": "not reached within 200000 steps"}
            for pct, params in ((25.2, 424_790), (1.75, 29_534))]
    ticks: list[str] = []
    set_yticks = Axes.set_yticks
    monkeypatch.setattr(Axes, "set_yticks", lambda self, t, names=None, **k: (ticks.extend(names or []),
                                                                              set_yticks(self, t, names, **k))[1])
    bars = plots.plot_steps_bars(rows, tmp_path, 0.95)
    assert bars[0].is_file()
    assert [t for t in ticks if "DQN" in t] == ["ALE/Pong 25% DQN from scratch (not reached)",
                                                "ALE/Pong 1.8% DQN from scratch (not reached)"]
