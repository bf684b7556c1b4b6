"""``kd-system export``: a checkpoint as an ONNX (fp32 or int8) or TorchScript file plus a JSON sidecar."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from kd_system.export.records import CALIBRATIONS, DEFAULT_CALIBRATION_STATES, FORMATS, ExportRequest

DESCRIPTION = (
    "Write CHECKPOINT (a student snapshot, a run's best checkpoint, or a teacher: spec.json + model.safetensors) "
    "as a deployable file with a JSON sidecar FILE.json (source spec, input and output, parity on 1,000 held-out "
    "states, sha256, versions). A multi-task snapshot becomes one file per task, because each task's student is "
    "an ordinary network with its own input size: --out student.onnx writes student.<task>.onnx and its sidecar "
    "per task. fp32 files must match the checkpoint (max abs diff <= 1e-4, same greedy actions) or nothing is "
    "written. Run a file again with `kd-system eval FILE`.")


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint as ONNX (fp32 or int8) or TorchScript",
                              description=DESCRIPTION)
    p.add_argument("checkpoint", help="checkpoint directory: student snapshot, best checkpoint or teacher")
    p.add_argument("--format", dest="fmt", required=True, metavar="|".join(FORMATS),
                   help="onnx (input obs, output q or logits, dynamic batch) or torchscript (traced, frozen)")
    p.add_argument("--out", required=True, help="the file to write (a multi-task snapshot: student.<task>.onnx per task)")
    p.add_argument("--int8", action="store_true",
                   help="ONNX only: int8 by onnxruntime; MLPs dynamically, CNNs statically on calibration states")
    p.add_argument("--calibration", choices=CALIBRATIONS, default=None,
                   help="CNN --int8: teacher (default where the model card records one: fresh rollouts of the "
                        "teacher, epsilon 0.05) or store (refused: a finished run's replay store is gone)")
    p.add_argument("--calibration-states", type=int, default=DEFAULT_CALIBRATION_STATES, metavar="N",
                   help=f"states to calibrate a CNN's int8 ranges on (default {DEFAULT_CALIBRATION_STATES})")
    p.add_argument("--force", action="store_true", help="replace an existing --out and its sidecar")
    p.set_defaults(func=_cli_export)


def _cli_export(args: argparse.Namespace) -> int:
    from kd_system.export.exporter import export_checkpoint
    from kd_system.metrics import say

    request = ExportRequest(Path(args.checkpoint), str(args.fmt), Path(args.out), bool(args.int8), args.calibration,
                            int(args.calibration_states), bool(args.force))
    results = export_checkpoint(request)
    for result in results:
        parity = result.parity
        kl = f", KL {parity.kl_mean:.2e}" if parity.kl_mean is not None else ""
        say(f"wrote {result.path} ({result.precision}) and {result.sidecar.name}: max abs diff "
            f"{parity.max_abs_diff:.2e}, greedy agreement {parity.greedy_agreement:.2%}{kl} on {parity.states} "
            f"held-out states of {parity.env_id}")
    print(json.dumps([{"file": str(r.path), "sidecar": str(r.sidecar), "precision": r.precision,
                       "max_abs_diff": r.parity.max_abs_diff, "greedy_agreement": r.parity.greedy_agreement,
                       "kl_mean": r.parity.kl_mean} for r in results], indent=2))
    return 0
