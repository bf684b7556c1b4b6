"""Subprocess entry for one from-scratch baseline, so its Ray instance lives and dies with it."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from kd_system.config import load_config, resolve_teacher_path
from kd_system.experiments.grid import shipped_config_name
from kd_system.experiments.scratch import ScratchBudget, train_from_scratch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env", required=True)
    parser.add_argument("--network", required=True, help="the student's networks.build_network spec as JSON")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--budget", default="{}", help="ScratchBudget fields as JSON")
    args = parser.parse_args()
    teacher_dir = resolve_teacher_path(load_config(shipped_config_name(args.env)).teacher.checkpoint)
    result = train_from_scratch(args.env, json.loads(args.network), teacher_dir, ScratchBudget(**json.loads(args.budget)))
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)  # the file appears whole or not at all: its presence means "done"


if __name__ == "__main__":
    main()
