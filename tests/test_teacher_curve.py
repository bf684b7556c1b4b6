"""The teacher training's curve (experiments/teacher_curve.py) from a progress log as sb3_teacher writes it."""
import json

import numpy as np

from kd_system.experiments.teacher_curve import _rolling_mean, main, read_progress


def _progress(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_the_curve_is_drawn_from_games_and_evaluations(tmp_path, capsys):
    records = [{"kind": "episode", "env_steps": 1000 * i, "return": -21 + i, "length": 900, "epsilon": 0.01}
               for i in range(1, 30)]
    records += [{"kind": "rate", "env_steps": 10_000, "steps_per_s": 70.0, "wall_s": 140.0},
                {"kind": "eval", "env_steps": 10_000, "wall_s": 150.0, "mean": -15.0, "returns": [-16.0, -14.0]},
                {"kind": "eval", "env_steps": 20_000, "wall_s": 300.0, "mean": -5.0, "returns": [-5.0]}]
    records.sort(key=lambda r: r["env_steps"])  # in the order of the steps, as written
    progress = _progress(tmp_path / "progress.jsonl", records)
    games, evals = read_progress(progress)
    assert len(games) == 29 and [e["mean"] for e in evals] == [-15.0, -5.0]
    out = tmp_path / "plots" / "curve.png"
    assert main([str(progress), str(out), "--target", "18"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_rolling_mean_covers_the_first_games_too():
    values = np.array([1.0, 3.0, 5.0, 7.0])
    assert _rolling_mean(values, 2).tolist() == [1.0, 2.0, 4.0, 6.0]
    assert _rolling_mean(values, 10).tolist() == [1.0, 2.0, 3.0, 4.0]


def test_a_file_that_is_not_a_progress_log_is_one_line_and_status_2(tmp_path, capsys):
    bad = tmp_path / "progress.jsonl"
    bad.write_text('{"kind": "episode", "env_steps": 1, "return": 0}\nnot json\n{"kind": "rate"}\n')
    assert main([str(bad), str(tmp_path / "c.png")]) == 2
    assert f"{bad}:2 is not a JSON record" in capsys.readouterr().err
    assert main([str(_progress(tmp_path / "other.jsonl", [{"kind": "rate"}])), str(tmp_path / "c.png")]) == 2
    assert main([str(tmp_path / "missing.jsonl"), str(tmp_path / "c.png")]) == 2
    assert not (tmp_path / "c.png").exists()


def test_a_killed_part_s_lost_stretch_gives_way_to_its_replay_and_a_cut_last_line_is_left_out(tmp_path):
    def game(step, ret):
        return {"kind": "episode", "env_steps": step, "return": ret, "length": 900, "epsilon": 0.01}

    records = [game(900, -21.0), game(1800, -20.0), {"kind": "eval", "env_steps": 2000, "mean": -19.0, "returns": [-19.0]},
               game(2000, -18.0), game(2700, -17.0), {"kind": "eval", "env_steps": 3000, "mean": -16.0, "returns": [-16.0]},
               game(3600, -15.0),  # killed here; the part resumes from its save at 2,500
               game(2900, -10.0), game(3500, -9.0)]
    path = _progress(tmp_path / "progress.jsonl", records)
    path.write_text(path.read_text() + '{"kind": "episode", "env_st')  # cut mid-line
    games, evals = read_progress(path)
    assert [(g["env_steps"], g["return"]) for g in games] == [(900, -21.0), (1800, -20.0), (2000, -18.0), (2700, -17.0),
                                                            (2900, -10.0), (3500, -9.0)]
    assert [e["env_steps"] for e in evals] == [2000]
