"""The compose demo's look inside its containers (deploy/compose-demo.sh pipes this file to the
image's Python, so the host needs no Python of its own):

  nodes              the Ray nodes offering kd_actor, as "NODE_ID IP" lines (run in the head)
  collector-nodes    the node ids that hold a live collector, one a line (run in the head)
  verify RUN_DIR WORKER_NODE_IDS [--killed]
                     the run on the runs volume: summary.json reached the CartPole target, the
                     checkpoints are there, every actor ran on a worker node; with --killed, the
                     head replaced what died with the killed worker. Prints what it found; exit 1
                     with the reason when something does not hold.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DASHBOARD = "http://127.0.0.1:8265"  # inside the head container


def ray_list(*args: str) -> list[dict]:
    shown = subprocess.run(["ray", "list", *args, "--address", DASHBOARD, "--format", "json", "--detail"],
                           capture_output=True, text=True, timeout=120)
    # until the dashboard has its first tables it prints a message instead of JSON
    return json.loads(shown.stdout) if shown.stdout.lstrip().startswith("[") else []


def nodes() -> None:
    for node in ray_list("nodes"):
        if node["state"] == "ALIVE" and "kd_actor" in node["resources_total"]:
            print(node["node_id"], node["node_ip"])


def collector_nodes() -> None:
    for node_id in sorted({a["node_id"] for a in ray_list("actors", "--filter", "state=ALIVE")
                           if a["class_name"] == "Collector" and a.get("node_id")}):
        print(node_id)


def verify(run_dir: Path, worker_nodes: set[str], killed: bool) -> list[str]:
    """What does not hold, as sentences; empty when the run is as the demo expects."""
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        return [f"{summary_path} is not on the runs volume"]
    summary = json.loads(summary_path.read_text())
    snapshots = sorted(p.name for p in (run_dir / "checkpoints").glob("update-*"))
    placement = summary.get("placement") or {}
    actors = placement.get("actors") or []
    print(f"summary.json: stop_reason={summary['stop_reason']!r}, normalized_score={summary.get('normalized_score')}, "
          f"learner_updates={summary.get('learner_updates')}, states_labelled={summary.get('states_labelled')}, "
          f"component_deaths={summary.get('component_deaths')}, wall_s={summary.get('wall_s', 0):.0f}")
    print(f"checkpoints: {', '.join(snapshots) or 'none'}")
    print(f"placement: head {str(placement.get('head'))[:8]}, learner {str(placement.get('learner'))[:8]}, "
          f"actors {[str(a)[:8] for a in actors]}")
    problems = []
    if not str(summary["stop_reason"]).startswith("target score"):
        problems.append(f"the run did not reach the CartPole target: stop_reason {summary['stop_reason']!r}")
    if summary.get("failure"):
        problems.append(f"the run failed: {summary['failure']}")
    if not snapshots:
        problems.append(f"no checkpoints in {run_dir / 'checkpoints'}")
    if not actors or not set(actors) <= worker_nodes:
        problems.append(f"actors ran on {actors}, not only on the worker nodes {sorted(worker_nodes)}")
    if killed and not summary.get("component_deaths"):
        problems.append("a worker was killed, yet the summary counts no component deaths")
    return problems


def main(argv: list[str]) -> int:
    match argv:
        case ["nodes"]:
            nodes()
        case ["collector-nodes"]:
            collector_nodes()
        case ["verify", run_dir, worker_ids, *rest] if rest in ([], ["--killed"]):
            problems = verify(Path(run_dir), set(worker_ids.split(",")) - {""}, bool(rest))
            for problem in problems:
                print(f"NOT OK: {problem}")
            return 1 if problems else 0
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
