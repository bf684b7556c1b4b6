"""Deployment settings without a cluster: actors.num_actors=auto counting, env:NAME references for
secrets, and the one-line errors of deploy/entrypoint.sh and the CLI on bad input."""
from __future__ import annotations

import subprocess
import sys

import pytest

from deploy_helpers import REPO, clean_env, entrypoint
from kd_system.launch.cluster_info import Demand, actor_slots, learner_demand, learner_gpus_for
from kd_system.config import load_config
from kd_system.launch.secrets import resolve_redis_url, with_secrets
from kd_system.errors import ConfigError

HEAD = {"NodeID": "h", "Alive": True, "Resources": {"CPU": 2.0, "kd_learner": 1.0}}
WORKER_A = {"NodeID": "a", "Alive": True, "Resources": {"CPU": 4.0, "kd_actor": 1.0}}
WORKER_B = {"NodeID": "b", "Alive": True, "Resources": {"CPU": 3.0, "kd_actor": 1.0}}
GONE = {"NodeID": "g", "Alive": False, "Resources": {"CPU": 64.0, "kd_actor": 1.0}}
EVALUATOR = Demand(0.25)


# ---- actors.num_actors = auto --------------------------------------------------------------------

def test_auto_counts_whole_cpu_shares_on_alive_actor_nodes():
    nodes = [HEAD, WORKER_A, WORKER_B, GONE]
    pinned_learner = Demand(0.5, resource="kd_learner")  # only the head offers it: no room held back
    assert actor_slots(nodes, 1.0, "kd_actor", [pinned_learner]) == 7
    assert actor_slots(nodes, 0.5, "kd_actor", [pinned_learner]) == 14
    assert actor_slots(nodes, 1.0, "kd_actor", []) == 7


def test_auto_holds_back_room_for_components_that_could_land_on_actor_nodes():
    nodes = [HEAD, WORKER_A, WORKER_B]
    free_learner = Demand(0.5)
    # 7 shares, one held back for the evaluator and one for the unpinned learner
    assert actor_slots(nodes, 1.0, "kd_actor", [free_learner, EVALUATOR]) == 5
    # a learner that needs a GPU cannot land on these CPU nodes
    assert actor_slots(nodes, 1.0, "kd_actor", [Demand(0.5, gpus=1.0), EVALUATOR]) == 6
    # 2 CPUs, shares of 1.5: one share, and a 0.25 evaluator costs a whole one
    assert actor_slots([{"Alive": True, "Resources": {"CPU": 2.0}}], 1.5, None, [EVALUATOR]) == 0


def test_auto_without_a_resource_uses_every_alive_node_and_rounds_shares_exactly():
    nodes = [{"Alive": True, "Resources": {"CPU": 0.3}}, {"Alive": True, "Resources": {"CPU": 1.0}}]
    assert actor_slots(nodes, 0.1, None, []) == 3 + 10  # 0.3 / 0.1 is 2.9999... in floating point
    assert actor_slots([HEAD], 1.0, "kd_actor", [EVALUATOR]) == 0


def test_learner_gpu_request_is_one_decision_for_placement_and_room():
    """learner.device=cuda pinned to a ray_resource asks for a GPU before the cluster has one (so an
    autoscaler starts a GPU node); the auto count must then not hold room for it on GPU-less nodes."""
    cuda_pinned = load_config(None, ["learner.device=cuda", "learner.ray_resource=kd_learner"])
    assert learner_gpus_for(cuda_pinned, cluster_gpus=0.0) == 1.0
    demand = learner_demand(cuda_pinned, cluster_gpus=0.0)
    assert demand == Demand(cuda_pinned.learner.num_cpus, 1.0, "kd_learner")
    shared = {"NodeID": "s", "Alive": True, "Resources": {"CPU": 4.0, "kd_actor": 1.0, "kd_learner": 1.0}}
    # 4 shares less one for the evaluator; the learner cannot land on this GPU-less node
    assert actor_slots([shared], 1.0, "kd_actor", [demand, EVALUATOR]) == 3
    with_gpu = {**shared, "Resources": {**shared["Resources"], "GPU": 1.0}}
    assert actor_slots([with_gpu], 1.0, "kd_actor", [demand, EVALUATOR]) == 2
    # the other cases: a GPU in the cluster is used unless device=cpu; without one, only the pinned cuda learner waits
    assert learner_gpus_for(load_config(None, ["learner.device=cuda"]), cluster_gpus=0.0) == 0.0
    assert learner_gpus_for(load_config(None, ["learner.device=auto"]), cluster_gpus=2.0) == 1.0
    assert learner_gpus_for(load_config(None, ["learner.device=cpu", "learner.ray_resource=kd_learner"]),
                            cluster_gpus=2.0) == 0.0


def test_num_actors_accepts_a_number_or_auto():
    assert load_config(None, ["actors.num_actors=auto"]).actors.num_actors == "auto"
    assert load_config(None, ["actors.num_actors=3"]).actors.num_actors == 3
    for bad, message in ((["actors.num_actors=all"], "actors.num_actors: expected an integer or auto"),
                         (["actors.num_actors=0"], "actors.num_actors (a number or auto)")):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(None, bad)


# ---- env:NAME references --------------------------------------------------------------------------

def test_redis_url_can_name_an_environment_variable(monkeypatch):
    monkeypatch.setenv("KD_TEST_REDIS", "redis://:pw@10.0.0.5:6380/0")
    config = load_config(None, ["store.redis_url=env:KD_TEST_REDIS"])
    assert config.store.redis_url == "env:KD_TEST_REDIS"  # what the run directory saves
    assert with_secrets(config).store.redis_url == "redis://:pw@10.0.0.5:6380/0"
    plain = load_config(None, ["store.redis_url=redis://localhost:6380/0"])
    assert with_secrets(plain) is plain


def test_env_references_fail_with_one_line_that_says_what_to_set(monkeypatch):
    monkeypatch.delenv("KD_TEST_MISSING", raising=False)
    with pytest.raises(ConfigError, match="environment variable KD_TEST_MISSING is not set: export KD_TEST_MISSING="):
        resolve_redis_url("env:KD_TEST_MISSING")
    with pytest.raises(ConfigError, match="is not env:NAME"):
        resolve_redis_url("env:not-a-name")
    monkeypatch.setenv("KD_TEST_HTTP", "http://example")
    with pytest.raises(ConfigError, match="KD_TEST_HTTP .* must hold a redis://"):
        resolve_redis_url("env:KD_TEST_HTTP")


def test_cli_names_the_unset_variable_before_starting_anything(tmp_path):
    env = clean_env(KD_TEST_UNSET_URL="")
    result = subprocess.run([sys.executable, "-m", "kd_system.cli", "run", "--set", f"head.runs_dir={tmp_path}",
                             "--set", "store.redis_url=env:KD_TEST_UNSET_URL"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("kd-system: error: store.redis_url is env:KD_TEST_UNSET_URL") and "export" in line
    assert not any(tmp_path.iterdir())  # no run directory was created


# ---- deploy/entrypoint.sh bad input -----------------------------------------------------------------

TOKEN = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "test-token-not-a-secret"}


@pytest.mark.parametrize("args, settings, expected", [
    ([], {}, "name a role"),
    (["redis"], {"REDIS_PASSWORD": ""}, "REDIS_PASSWORD is empty"),
    (["redis"], {"REDIS_PASSWORD": "short"}, "REDIS_PASSWORD must be 16 or more"),
    (["redis"], {"REDIS_PASSWORD": "has space and more than 16"}, "REDIS_PASSWORD must be 16 or more"),
    (["head"], {"RAY_AUTH_MODE": "token"}, "RAY_AUTH_TOKEN is empty"),
    (["head", "serve"], TOKEN, "after 'head' only 'run [ARGS]' may follow"),
    (["worker"], TOKEN, "KD_RAY_HEAD is empty"),
    (["worker"], TOKEN | {"KD_RAY_HEAD": "h:1", "KD_NODE_RESOURCES": "kd_actor"}, "KD_NODE_RESOURCES must be a JSON object"),
    (["health", "worker"], {}, "health takes redis or head"),
    (["redis"], {"KD_ENV_FILE": "/nonexistent/kd.env"}, "KD_ENV_FILE=/nonexistent/kd.env cannot be read"),
])
def test_entrypoint_refuses_bad_settings_with_one_line(args, settings, expected):
    result = entrypoint(*args, env=clean_env(**settings))
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("kd-entrypoint: error: ") and expected in line


def test_entrypoint_reads_its_env_file_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    env_file = tmp_path / "kd.env"
    env_file.write_text(f"# a comment\nREDIS_PASSWORD=short\nKD_RUN_ARGS=--set a=1 --set b=2\nX=$(touch {marker})\n")
    result = entrypoint("redis", env=clean_env(KD_ENV_FILE=str(env_file)))
    assert result.returncode == 2 and "REDIS_PASSWORD must be 16 or more" in result.stderr
    assert not marker.exists()
    shown = entrypoint("bash", "-c", 'echo "$KD_RUN_ARGS"', env=clean_env(KD_ENV_FILE=str(env_file)))
    assert shown.returncode == 0 and shown.stdout == "--set a=1 --set b=2\n" and not marker.exists()


def test_entrypoint_runs_any_other_command_as_given_with_the_deployment_settings():
    result = entrypoint("echo", "hello", "world", env=clean_env())
    assert result.returncode == 0 and result.stdout == "hello world\n"
    env = clean_env(RAY_AUTH_TOKEN="t" * 16)
    del env["RAY_AUTH_MODE"]
    mode = entrypoint("bash", "-c", 'echo "$RAY_AUTH_MODE"', env=env)
    assert mode.stdout == "token\n"  # Ray's CLI on a node then talks to the token-protected cluster


def test_entrypoint_health_fails_when_nothing_answers():
    from deploy_helpers import free_port

    port = str(free_port())
    redis = entrypoint("health", "redis", env=clean_env(REDIS_PASSWORD="x" * 16, KD_REDIS_PORT=port))
    head = entrypoint("health", "head", env=clean_env(KD_RAY_PORT=port, KD_HEALTH_TIMEOUT_S="5", RAY_AUTH_MODE="disabled"))
    assert redis.returncode != 0 and head.returncode != 0


def test_entrypoint_script_is_executable_and_parses():
    assert (REPO / "deploy" / "entrypoint.sh").stat().st_mode & 0o111
    assert subprocess.run(["bash", "-n", str(REPO / "deploy" / "entrypoint.sh")]).returncode == 0
