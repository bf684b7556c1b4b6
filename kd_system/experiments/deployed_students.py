"""Deployable students, measured: export each student checkpoint to fp32 ONNX, int8 ONNX and
TorchScript with ``kd-system export``, then score the checkpoint and every file with
``kd-system eval`` on the same episode seeds (normalized score against the teacher, paired 95% CI,
agreement with the fp32 checkpoint on 1,000 held-out states).

``python -m kd_system.experiments.deployed_students --student cartpole=DIR --student lunarlander=DIR --episodes 100``
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

FILES = {"onnx fp32": ("onnx", [], ".onnx"), "onnx int8": ("onnx", ["--int8"], ".int8.onnx"),
         "torchscript": ("torchscript", [], ".pt")}


def _kd(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "kd_system.cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"kd-system {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1]}")
    return done.stdout


def measure(name: str, checkpoint: Path, out: Path, episodes: int, seed: int) -> list[dict]:
    rows = [{"student": name, "engine": "checkpoint (torch fp32)", "bytes": (checkpoint / "model.safetensors").stat().st_size,
             **json.loads(_kd("eval", str(checkpoint), "--episodes", str(episodes), "--seed", str(seed)))}]
    for engine, (fmt, flags, suffix) in FILES.items():
        file = out / f"{name}{suffix}"
        if not file.exists():
            _kd("export", str(checkpoint), "--format", fmt, "--out", str(file), *flags)
        sidecar = json.loads(Path(f"{file}.json").read_text())
        report = json.loads(_kd("eval", str(file), "--episodes", str(episodes), "--seed", str(seed)))
        rows.append({"student": name, "engine": engine, "bytes": file.stat().st_size,
                     "kl_to_fp32": sidecar["parity"].get("kl_mean"), "max_abs_diff": sidecar["parity"]["max_abs_diff"],
                     **report})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| student | engine | bytes | agreement with fp32 (1,000 states) | KL to fp32 | return | normalized score (95% CI) | ÷ checkpoint's |",
             "|---|---|---|---|---|---|---|---|"]
    base = {r["student"]: r["normalized_score"] for r in rows if r["engine"].startswith("checkpoint")}
    for r in rows:
        agreement = r.get("agreement_with_source")
        kl = r.get("kl_to_fp32")
        low, high = r["normalized_score_ci95"]
        lines.append(f"| {r['student']} | {r['engine']} | {r['bytes']:,} | "
                     f"{'—' if agreement is None else f'{agreement:.1%}'} | {'—' if kl is None else f'{kl:.1e}'} | "
                     f"{r['return_mean']:.1f} ± {r['return_std']:.1f} | {r['normalized_score']:.3f} [{low:.3f}, {high:.3f}] | "
                     f"{r['normalized_score'] / base[r['student']]:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", action="append", required=True, metavar="NAME=CHECKPOINT")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/deployed-students")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for item in args.student:
        name, _, checkpoint = item.partition("=")
        rows += measure(name, Path(checkpoint), out, args.episodes, args.seed)
        (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
