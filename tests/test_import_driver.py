"""`kd-system teacher import` as a command: format detection, --out refusal and --force, the model
card, one-line errors with nothing written, and the pickle opt-in (the converters have their own
tests: test_import_sb3.py, test_import_rllib.py, test_import_cleanrl.py, test_import_opaque.py)."""
import io
import json
import pickle
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from kd_system.errors import CheckpointError
from kd_system.policies.files import PolicySpec, save_policy
from kd_system.policies.networks import build_network
from kd_system.teachers.imports.importer import detect_format, source_sha256
from kd_system.teachers.imports.writing import check_out


def kd(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kd_system.cli", *args], capture_output=True, text=True, timeout=timeout)


def scripted_cartpole_teacher(path: Path) -> Path:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(net), str(path))
    return path


class Planted:
    """Unpickling this would create the marker file: proof that nothing unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_detects_each_format(tmp_path):
    sb3 = tmp_path / "model.zip"
    with zipfile.ZipFile(sb3, "w") as archive:
        archive.writestr("data", "{}")
        archive.writestr("policy.pth", b"")
    assert detect_format(sb3) == "sb3"
    assert detect_format(scripted_cartpole_teacher(tmp_path / "policy.pt")) == "torchscript"
    state_dict = tmp_path / "dqn.cleanrl_model"
    torch.save({"network.0.weight": torch.zeros(2, 4)}, state_dict)
    assert detect_format(state_dict) == "cleanrl"
    (tmp_path / "policy.onnx").write_bytes(b"\x08\x07")
    assert detect_format(tmp_path / "policy.onnx") == "onnx"
    rllib = tmp_path / "algo"
    rllib.mkdir()
    (rllib / "rllib_checkpoint.json").write_text("{}")
    assert detect_format(rllib) == "rllib"


def test_detection_refuses_what_it_cannot_name(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="--from"):
        detect_format(tmp_path / "notes.txt")
    with pytest.raises(CheckpointError, match="does not exist"):
        detect_format(tmp_path / "missing.zip")
    ours = tmp_path / "ours"
    spec = PolicySpec("teacher", "CartPole-v1", (4,), "float32", 2, "q", {"kind": "mlp", "hidden": [8]})
    save_policy(ours, spec, build_network(spec.network, (4,), 2))
    with pytest.raises(CheckpointError, match="already a kd_system checkpoint"):
        detect_format(ours)


def test_sha256_of_a_directory_covers_names_and_contents(tmp_path):
    (tmp_path / "a").write_text("1")
    first = source_sha256(tmp_path)
    (tmp_path / "a").rename(tmp_path / "b")
    assert source_sha256(tmp_path) != first


def test_out_holding_a_teacher_needs_force(tmp_path):
    check_out(tmp_path / "new", force=False)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "spec.json").write_text("{}")
    with pytest.raises(CheckpointError, match="--force"):
        check_out(tmp_path / "old", force=False)
    check_out(tmp_path / "old", force=True)


@pytest.mark.slow  # end to end through the commands: several CLI processes
def test_import_command_writes_a_teacher_with_its_card_and_refuses_to_overwrite(tmp_path):
    source = scripted_cartpole_teacher(tmp_path / "policy.pt")
    out = tmp_path / "teacher"
    done = kd("teacher", "import", str(source), "--env", "CartPole-v1", "--out", str(out), "--output-kind", "q",
              "--episodes", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "model.pt", "spec.json"]
    spec = json.loads((out / "spec.json").read_text())
    card = spec["model_card"]
    assert spec["network"]["kind"] == "torchscript" and spec["output_kind"] == "q"
    assert card["source_format"] == "torchscript" and card["source_sha256"] == source_sha256(source)
    assert card["parity_max_abs_diff"] <= 1e-5 and card["parity_states"] == 1000
    assert card["eval_episodes"] == 3 and "random_return_mean" in card and "command" in card
    low, high = card["eval_return_ci95"]  # the mean's 95% t-interval over the 3 games
    assert low <= card["eval_return_mean"] <= high
    assert "Parity on 1,000 states" in (out / "MODEL_CARD.md").read_text()
    assert spec["num_params"] == 4 * 32 + 32 + 32 * 2 + 2

    again = kd("teacher", "import", str(source), "--env", "CartPole-v1", "--out", str(out), "--output-kind", "q")
    assert again.returncode == 2 and "--force" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    forced = kd("teacher", "import", str(source), "--env", "CartPole-v1", "--out", str(out), "--output-kind", "q",
                "--episodes", "0", "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "eval_return_mean" not in json.loads((out / "spec.json").read_text())["model_card"]
    assert not list(tmp_path.glob(".teacher.importing-*"))  # no staging directory left behind

    scored = kd("eval", str(out), "--episodes", "2")  # an imported opaque teacher is an ordinary checkpoint
    assert scored.returncode == 0, scored.stderr[-2000:]


@pytest.mark.parametrize("args, expected", [
    (["--env", "Acrobot-v1", "--output-kind", "q"], "Acrobot-v1"),  # 4 inputs vs Acrobot's 6
    (["--env", "CartPole-v1"], "--output-kind"),
    (["--env", "NoSuchEnv-v0", "--output-kind", "q"], "NoSuchEnv-v0"),
])
def test_bad_imports_fail_in_one_line_and_write_nothing(tmp_path, args, expected):
    source = scripted_cartpole_teacher(tmp_path / "policy.pt")
    out = tmp_path / "teacher"
    done = kd("teacher", "import", str(source), "--out", str(out), "--episodes", "0", *args)
    assert done.returncode == 2, done.stderr[-2000:]
    error = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(error) == 1 and expected in error[0], done.stderr
    assert not out.exists()


def record(tmp_path, **fields) -> Path:
    path = tmp_path / "training.json"
    path.write_text(json.dumps({"trainer": "SB3 2.9.2 DQN", "env_steps": 1000, "wall_s": 20.0} | fields))
    return path


def test_a_training_record_goes_on_the_card(tmp_path):
    from kd_system.teachers.imports.training_record import card_fields, load_training_record, markdown_rows

    loaded = load_training_record(record(tmp_path, parts=2, evaluations=[{"env_steps": 500, "mean": -20.5}],
                                         evaluation_protocol="8 games"))
    fields = card_fields(loaded)
    assert fields["steps_per_s"] == 50.0 and fields["parts"] == 2 and "hardware" not in fields
    rows = markdown_rows(fields)
    assert "| Trained with | SB3 2.9.2 DQN |" in rows and "| Env steps/s | 50.0 |" in rows
    assert "in 2 parts" in rows and "-20.50 at 500" in rows and "(8 games)" in rows
    assert markdown_rows({}) == ""


@pytest.mark.parametrize("fields, fragment", [
    ({"env_steps": 0}, "env_steps must be > 0"),
    ({"wall_s": "long"}, "wall_s: expected a number"),
    ({"trainr": "x"}, "unknown key trainr"),
    ({"evaluations": [{"env_steps": 5}]}, "evaluations[0].mean"),
])
def test_a_bad_training_record_names_the_file_and_field(tmp_path, fields, fragment):
    from kd_system.errors import ConfigError
    from kd_system.teachers.imports.training_record import load_training_record

    with pytest.raises(ConfigError) as caught:
        load_training_record(record(tmp_path, **fields))
    message = str(caught.value)
    assert message.startswith(f"--training {tmp_path / 'training.json'}: ") and fragment in message, message
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        load_training_record(tmp_path / "list.json")
    with pytest.raises(ConfigError, match="no such file"):
        load_training_record(tmp_path / "missing.json")


def test_a_bad_training_record_fails_the_import_before_any_work(tmp_path):
    source = scripted_cartpole_teacher(tmp_path / "policy.pt")
    out = tmp_path / "teacher"
    done = kd("teacher", "import", str(source), "--env", "CartPole-v1", "--out", str(out), "--output-kind", "q",
              "--training", str(record(tmp_path, env_steps=-1)))
    assert done.returncode == 2
    error = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(error) == 1 and "env_steps must be > 0" in error[0], done.stderr
    assert not out.exists()


def test_a_corrupt_file_fails_in_one_line(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    done = kd("teacher", "import", str(bad), "--env", "CartPole-v1", "--out", str(tmp_path / "t"), "--output-kind", "q")
    assert done.returncode == 2 and "broken.onnx" in done.stderr
    assert not (tmp_path / "t").exists()


def test_rllib_checkpoint_needs_trust_pickle_and_is_never_unpickled_without(tmp_path):
    marker = tmp_path / "executed"
    checkpoint = tmp_path / "algo"
    checkpoint.mkdir()
    (checkpoint / "rllib_checkpoint.json").write_text(json.dumps({"type": "Algorithm"}))
    module_dir = checkpoint / "learner_group" / "learner" / "rl_module" / "default_policy"
    module_dir.mkdir(parents=True)  # the layout algo.save() writes, every pickle in it planted
    for path in (checkpoint / "algorithm_state.pkl", module_dir / "class_and_ctor_args.pkl", module_dir / "module_state.pkl"):
        path.write_bytes(pickle.dumps(Planted(marker)))
    done = kd("teacher", "import", str(checkpoint), "--env", "CartPole-v1", "--out", str(tmp_path / "t"))
    assert done.returncode == 2 and "--trust-pickle" in done.stderr, done.stderr
    run = kd("run", "--set", f"teacher.checkpoint={checkpoint}", "--set", f"head.runs_dir={tmp_path / 'runs'}")
    assert run.returncode == 2 and "--trust-pickle" in run.stderr, run.stderr
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_run_refuses_a_file_it_cannot_import_before_creating_anything(tmp_path):
    (tmp_path / "weights.bin").write_bytes(io.BytesIO(b"\x00" * 64).getvalue())
    done = kd("run", "--set", f"teacher.checkpoint={tmp_path / 'weights.bin'}", "--set", f"head.runs_dir={tmp_path / 'runs'}")
    assert done.returncode == 2 and "teacher.checkpoint" in done.stderr and "teacher.format" in done.stderr
    assert not (tmp_path / "runs").exists()


def cleanrl_atari_qnetwork(path: Path, actions: int = 6) -> Path:
    """A dqn_atari.py QNetwork's state dict (random weights): what CleanRL's --save-model writes."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 32, 8, 4), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 4, 2), torch.nn.ReLU(),
                              torch.nn.Conv2d(64, 64, 3, 1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(3136, 512), torch.nn.ReLU(), torch.nn.Linear(512, actions))
    torch.save({f"network.{key}": value for key, value in net.state_dict().items()}, path)
    return path


@pytest.mark.slow  # end to end through the commands: several CLI processes
def test_an_atari_teacher_trained_under_another_protocol_says_so(tmp_path):
    source = cleanrl_atari_qnetwork(tmp_path / "dqn_atari.cleanrl_model")
    out = tmp_path / "pong"
    done = kd("teacher", "import", str(source), "--env", "ALE/Pong-v5", "--out", str(out), "--episodes", "0")
    assert done.returncode == 0, done.stderr[-2000:]
    spec = json.loads((out / "spec.json").read_text())
    assert spec["protocol"]["sticky_actions"] == 0.0 and spec["protocol"]["assumed"] is True
    assert spec["model_card"]["parity_max_abs_diff"] <= 1e-5
    card = (out / "MODEL_CARD.md").read_text()
    assert "sticky actions 0" in card and "--trained-env" in card
    assert "note: trained with sticky actions 0" in done.stderr


@pytest.mark.slow
def test_run_imports_an_sb3_zip_on_the_fly_into_the_run_directory(tmp_path):
    from stable_baselines3 import DQN
    DQN("MlpPolicy", "CartPole-v1", seed=0, policy_kwargs={"net_arch": [256, 256]}).save(tmp_path / "dqn.zip")
    runs = tmp_path / "runs"
    done = kd("run", "--set", f"teacher.checkpoint={tmp_path / 'dqn.zip'}", "--set", f"head.runs_dir={runs}",
              "--set", "head.max_updates=100", "--set", "head.target_score=null", "--set", "head.eval_episodes=3",
              "--set", "head.final_eval_episodes=3", "--set", "limiter.min_size_to_sample=1000")
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    teacher = json.loads((run_dir / "teacher" / "spec.json").read_text())
    assert teacher["model_card"]["source_format"] == "sb3" and teacher["model_card"]["parity_max_abs_diff"] == 0.0
    assert (run_dir / "teacher" / "MODEL_CARD.md").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    student = json.loads((Path(summary["best_checkpoint"]) / "spec.json").read_text())
    assert student["model_card"]["distilled_from"] == str(run_dir / "teacher")
    assert student["model_card"]["teacher_imported_from"] == str(tmp_path / "dqn.zip")
    scored = kd("eval", summary["best_checkpoint"], "--episodes", "2")  # finds the imported teacher in the run
    assert scored.returncode == 0 and "normalized_score" in scored.stdout, scored.stderr[-2000:]
