"""`kd-system export` and `kd-system eval FILE` as commands: a student goes out as a file and is
scored again from the file, with its normalized score, CI and agreement with the fp32 source; bad
input gets one line and exit 2 and leaves no file behind."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kd_system.policies.files import PolicySpec, save_policy
from kd_system.policies.networks import build_network, count_parameters

MLP = {"kind": "mlp", "hidden": [32, 32], "activation": "relu"}


def kd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kd_system.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export-cli")
    torch.manual_seed(0)
    teacher = build_network(MLP, (4,), 2)
    save_policy(root / "teacher", PolicySpec("teacher", "CartPole-v1", (4,), "float32", 2, "q", MLP,
                                             count_parameters(teacher)), teacher)
    module = build_network(MLP, (4,), 2)
    return save_policy(root / "student", PolicySpec("student", "CartPole-v1", (4,), "float32", 2, "logits", MLP,
                                                    count_parameters(module), {"distilled_from": str(root / "teacher")}), module)


@pytest.mark.slow  # end to end through the commands: several CLI processes
@pytest.mark.parametrize("fmt, extra", [("onnx", []), ("onnx", ["--int8"]), ("torchscript", [])])
def test_an_exported_student_is_scored_from_the_file(student, tmp_path, fmt, extra):
    out = tmp_path / ("student.onnx" if fmt == "onnx" else "student.pt")
    done = kd("export", str(student), "--format", fmt, "--out", str(out), *extra)
    assert done.returncode == 0, done.stderr[-2000:]
    scored = kd("eval", str(out), "--episodes", "4")
    assert scored.returncode == 0, scored.stderr[-2000:]
    report = json.loads(scored.stdout)
    assert report["file_format"] == fmt and report["precision"] == ("int8" if extra else "fp32")
    assert report["held_out_states"] == 1000 and report["source_checkpoint"] == str(student.resolve())
    if not extra:
        assert report["agreement_with_source"] == 1.0
    assert len(report["normalized_score_ci95"]) == 2 and "normalized_score" in report


@pytest.mark.parametrize("args, expected", [
    (["eval", "{tmp}/missing.onnx"], "missing.onnx"),
    (["eval", "{tmp}/junk.onnx"], "junk.onnx"),
    (["export", "{tmp}/nope", "--format", "onnx", "--out", "{tmp}/x.onnx"], "nope"),
    (["export", "{student}", "--format", "onnx", "--out", "{tmp}/no/such/dir/x.onnx"], "--out"),
])
def test_bad_input_is_one_line_and_exit_2(student, tmp_path, args, expected):
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    (tmp_path / "junk.onnx.json").write_text("{}")
    before = sorted(p.name for p in tmp_path.iterdir())
    done = kd(*(a.format(tmp=tmp_path, student=student) for a in args))
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and expected in errors[0], done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
