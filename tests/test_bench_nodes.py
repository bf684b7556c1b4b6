"""`kd-system bench --only nodes`: collectors on multi-node Ray clusters (ray.cluster_utils) sharing this
machine, each pinned to its own node, writing to one Redis; the section reports rates per node count,
Redis's side, and the estimate of how many nodes one Redis serves. No timing asserts: rates depend on
the machine."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from kd_system.bench import nodes
from kd_system.bench.nodes import redis_capacity
from kd_system.cli import main

PER_COUNT = ("labelled_states_per_s", "per_node_mean_states_per_s", "redis_written_states_per_s", "redis_in_mb_per_s",
             "bytes_per_state", "wire_bytes_per_state", "redis_core_fraction", "cluster_start_s")


def test_the_estimate_is_the_smaller_of_the_redis_cpu_and_network_bounds():
    # 1 us of Redis CPU per state: one core writes 1M states/s, a 10k states/s node takes 1% of it
    cpu_bound = redis_capacity(10_000.0, 1e-6, 100.0)
    assert cpu_bound["redis_states_per_s_one_core"] == pytest.approx(1e6)
    assert cpu_bound["redis_core_fraction_per_node"] == pytest.approx(0.01)
    assert cpu_bound["nodes_by_redis_cpu"] == pytest.approx(100)
    assert cpu_bound["nodes_by_network"] == pytest.approx(1.25e9 / 1e6)  # 10 Gbit/s over 1 MB/s per node
    assert cpu_bound["bottleneck"] == "redis_cpu"
    assert cpu_bound["redis_nodes_capacity"] == math.floor(cpu_bound["nodes_by_redis_cpu"])  # whole nodes
    # fat states: the link fills first
    net_bound = redis_capacity(10_000.0, 1e-6, 50_000.0, network_gbit_s=1.0)
    assert net_bound["nodes_by_network"] == pytest.approx(1.25e8 / 5e8)
    assert (net_bound["redis_nodes_capacity"], net_bound["bottleneck"]) == (0, "network")
    # no measurable Redis CPU: only the link bounds it
    unmeasured = redis_capacity(10_000.0, None, 100.0)
    assert unmeasured["nodes_by_redis_cpu"] is None and unmeasured["bottleneck"] == "network"
    assert unmeasured["redis_nodes_capacity"] == 1250


def _processes_naming(words: list[str]) -> list[str]:
    """Command lines of live processes that mention any of ``words`` (a raylet names its node id)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if any(word in text for word in words):
            found.append(text[:200])
    return found


@pytest.mark.slow
def test_nodes_section_on_cartpole(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(nodes, "NODE_COUNTS", (1, 2))  # 4 nodes only take longer to start: the same code
    out = tmp_path / "bench.json"
    assert main(["bench", "--env", "CartPole-v1", "--only", "nodes", "--seconds", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    section = result["nodes"]
    assert section["node_counts"] == [1, 2] and list(section["by_nodes"]) == ["1", "2"]
    assert result["setup"]["sections"] == ["nodes"]
    for count, figures in section["by_nodes"].items():
        for key in PER_COUNT:
            assert math.isfinite(figures[key]) and figures[key] > 0, (count, key)
        assert figures["nodes"] == int(count)
        # every node got its collectors, and Ray put them where the custom resource said
        assert len(figures["node_ids"]) == int(count) and figures["placed_as_asked"]
        assert figures["collectors"] == int(count) * figures["collectors_per_node"]
        assert len(figures["labelled_states_per_s_per_node"]) == int(count)
        assert sum(figures["labelled_states_per_s_per_node"]) == pytest.approx(figures["labelled_states_per_s"])
        assert min(figures["labelled_states_per_s_per_node"]) > 0
        assert figures["per_node_mean_states_per_s"] == pytest.approx(figures["labelled_states_per_s"] / int(count))
    assert section["vs_one_node"][0] == 1.0
    assert section["labelled_states_per_s"] == [f["labelled_states_per_s"] for f in section["by_nodes"].values()]
    assert not set(section["by_nodes"]["1"]["node_ids"]) & set(section["by_nodes"]["2"]["node_ids"])  # fresh clusters
    estimate = section["redis_estimate"]
    assert estimate["node_states_per_s"] == section["per_node_states_per_s"][0]
    assert estimate["redis_nodes_capacity"] >= 0 and estimate["bottleneck"] in ("redis_cpu", "network")
    assert estimate["nodes_by_network"] > 0 and section["assumptions"]["network_gbit_s"] == nodes.NETWORK_GBIT_S
    table = capsys.readouterr().out
    assert "labelled states/s per node, 2 nodes x" in table and "nodes estimate" in table
    # the clusters are gone: no raylet (or any other process) names their nodes any more
    ids = [node for f in section["by_nodes"].values() for node in f["node_ids"]]
    deadline = time.monotonic() + 20
    while _processes_naming(ids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _processes_naming(ids)
