"""The methods table's cells and its arithmetic (issue 19): which runs it makes, and how seeds
become a row (mean, t-interval over seeds, env steps to 0.95)."""
import json

from kd_system.experiments.methods import cells, row_of, steps_to, write_table
from kd_system.experiments.repeats import seed_run_dir


def test_every_loss_and_size_and_a_linear_student_per_task():
    found = cells(["CartPole-v1"], None)
    methods = [cell.method for cell in found]
    assert methods == ["kl", "mi", "kl+0.1*mi", "adv", "mse", "kl, 4%", "kl, 2%", "kl, 1%", "kl, 0.5%", "linear"]
    assert len({cell.slug for cell in found}) == len(found)  # one directory each
    linear = found[-1]
    assert "student.hidden=[]" in linear.overrides and linear.share == f"{10 / 67586:.2%}"


def test_an_ensemble_cell_appears_once_its_two_extra_teachers_exist(tmp_path):
    assert not any(c.method == "ensemble of 3" for c in cells(["CartPole-v1"], tmp_path))
    for seed in (1, 2):
        (tmp_path / f"cartpole-v1-seed{seed}").mkdir()
        (tmp_path / f"cartpole-v1-seed{seed}" / "spec.json").write_text("{}")
    found = cells(["CartPole-v1"], tmp_path)
    assert [c.method for c in found][-3:] == ["ensemble of 3", "member seed1 alone", "member seed2 alone"]
    (ensemble,) = [c for c in found if c.method == "ensemble of 3"]
    listed = [o for o in ensemble.overrides if o.startswith("teacher.checkpoint=")][0]
    assert listed.startswith("teacher.checkpoint=[shipped:cartpole-v1,") and listed.count(",") == 2


def _seed(out, cell, seed, score, evals):
    run = seed_run_dir(out / cell.slug, seed)
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"normalized_score": score, "agreement_teacher_states": 0.9,
                                                  "wall_s": 30.0, "student_return_mean": 450.0 * score,
                                                  "teacher_return_mean": 500.0}))
    (run / "metrics.jsonl").write_text("\n".join(json.dumps({"kind": "eval", "normalized_score": s, "env_steps": n,
                                                             "updates": n, "time": 0.0})
                                                 for s, n in evals) + "\n")


def test_a_row_is_the_mean_over_seeds_with_a_t_interval_and_the_median_steps_to_095(tmp_path):
    cell = cells(["CartPole-v1"], None)[0]
    _seed(tmp_path, cell, 0, 1.0, [(0.5, 100), (0.96, 200)])
    _seed(tmp_path, cell, 1, 0.9, [(0.97, 400)])
    _seed(tmp_path, cell, 2, 0.8, [(0.2, 100)])
    row = row_of(cell, tmp_path, [0, 1, 2])
    # mean 0.9, sd 0.1, t(0.975, 2) = 4.3027: half-width 4.3027 * 0.1 / sqrt(3) = 0.24841
    assert abs(row["normalized_score"] - 0.9) < 1e-9 and abs(row["ci95_high"] - 0.9 - 0.24841) < 1e-4
    assert row["env_steps_to_095"] == 300 and row["reached_095"] == "2/3"  # median of 200 and 400
    assert row["at_first_eval"] == 1  # seed 1 was there at its first evaluation
    assert steps_to(seed_run_dir(tmp_path / cell.slug, 2)) is None
    write_table([row], tmp_path / "results")
    table = (tmp_path / "results" / "methods.md").read_text()
    assert "0.900 [0.652, 1.148]" in table and "1.000 / 0.900 / 0.800" in table
