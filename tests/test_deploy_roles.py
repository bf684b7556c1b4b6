"""Every role of deploy/entrypoint.sh as local processes, the way the containers run them: a Redis
with a password (`redis`), a Ray head (`head`) with token authentication, a Ray worker offering the
actor resource (`worker`), then a short distillation across them through the `run` role and one
through `ray job submit`, stopped with `ray job stop`. Ports are free ones; every process group
this module starts is stopped at the end, also when a test fails."""
from __future__ import annotations

import json
import signal
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import redis
import yaml

from deploy_helpers import ENTRYPOINT, clean_env, entrypoint, free_port, group_alive, stop_group, wait_until

pytestmark = pytest.mark.slow

SHORT = ["--config", "cartpole-v1", "--set", "head.target_score=null", "--set", "head.snapshot_every_s=2",
         "--set", "head.eval_episodes=3", "--set", "head.final_eval_episodes=3",
         "--set", "limiter.min_size_to_sample=2000", "--set", "actors.envs_per_actor=4",
         "--set", "actors.ray_resource=kd_actor", "--set", "learner.ray_resource=kd_learner"]


class LocalDeployment:
    """The processes of one deployment on this machine, started through the entrypoint."""

    def __init__(self, root: Path):
        self.root = root
        self.runs = root / "runs"
        # Ray's socket paths must stay short, so its temp dir is not under pytest's tmp_path.
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="kd-", dir="/tmp"))
        self.password = secrets.token_hex(16)
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.env = clean_env(
            REDIS_PASSWORD=self.password, KD_REDIS_PORT=str(free_port()), KD_REDIS_BIND="127.0.0.1",
            KD_REDIS_HOST="127.0.0.1", KD_REDIS_MAXMEMORY="256mb",
            RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
            KD_RAY_PORT=str(self.gcs_port), KD_DASHBOARD_HOST="127.0.0.1", KD_DASHBOARD_PORT=str(self.dashboard_port),
            KD_RUNS_DIR=str(self.runs))
        self.processes: list[subprocess.Popen] = []
        self.head_node = self.worker_node = None  # Ray node ids, once both have joined

    def ports_args(self) -> str:
        # Every port Ray would otherwise take from its fixed defaults, so this cluster cannot
        # collide with another one on the machine.
        ports = ["--ray-client-server-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                 "--runtime-env-agent-port", "--metrics-export-port", "--node-manager-port", "--object-manager-port"]
        return " ".join(f"{flag}={free_port()}" for flag in ports) + \
            f" --min-worker-port=0 --max-worker-port=0 --temp-dir={self.ray_tmp}"

    def start(self, role: str, log: str, **settings: str) -> subprocess.Popen:
        env = self.env | settings
        out = open(self.root / log, "w")
        proc = subprocess.Popen(["bash", str(ENTRYPOINT), role], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group, stopped as a whole
        self.processes.append(proc)
        return proc

    def healthy(self, role: str) -> bool:
        return entrypoint("health", role, env=self.env | {"KD_HEALTH_TIMEOUT_S": "5"}).returncode == 0

    def stop(self) -> list[int]:
        left = []
        for proc in reversed(self.processes):
            stop_group(proc)
            left += group_alive(proc.pid)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
        return left

    def ray_cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["ray", *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def node_offering(self, resource: str) -> str | None:
        """Id of the alive node that offers ``resource``, from Ray's state API."""
        listed = self.ray_cli("list", "nodes", "--address", f"http://127.0.0.1:{self.dashboard_port}",
                              "--format", "json", "--detail")
        # until the dashboard has its first node table it prints "No resource in the cluster"
        nodes = json.loads(listed.stdout) if listed.stdout.startswith("[") else []
        found = [n["node_id"] for n in nodes if n["state"] == "ALIVE" and resource in n["resources_total"]]
        return found[0] if found else None


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    d = LocalDeployment(tmp_path_factory.mktemp("deploy"))
    try:
        d.start("redis", "redis.log")
        wait_until(lambda: d.healthy("redis"), 60, "the redis role to answer PING")
        head = d.start("head", "head.log", KD_NUM_CPUS="2", KD_NODE_RESOURCES='{"kd_learner": 1}',
                       KD_RAY_START_ARGS=d.ports_args())
        wait_until(lambda: head.poll() is not None or d.healthy("head"), 300, "the head role's Ray to answer")
        assert head.poll() is None, (d.root / "head.log").read_text()[-3000:]
        worker = d.start("worker", "worker.log", KD_RAY_HEAD=f"127.0.0.1:{d.gcs_port}", KD_NUM_CPUS="3",
                         KD_NODE_RESOURCES='{"kd_actor": 1}', KD_RAY_START_ARGS=d.ports_args())
        wait_until(lambda: worker.poll() is not None or d.node_offering("kd_actor") is not None,
                   300, "the worker role to join the head")
        assert worker.poll() is None, (d.root / "worker.log").read_text()[-3000:]
        d.head_node, d.worker_node = d.node_offering("kd_learner"), d.node_offering("kd_actor")
        yield d
    finally:
        left = d.stop()
        assert not left, f"processes left running: {left}"


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_redis_role_has_a_password_a_memory_limit_and_noeviction(deployment):
    port = int(deployment.env["KD_REDIS_PORT"])
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port).ping()
    client = redis.Redis(host="127.0.0.1", port=port, password=deployment.password)
    try:
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("maxmemory") == {"maxmemory": str(256 * 1024 * 1024)}
        assert client.config_get("save") == {"save": ""} and client.config_get("appendonly") == {"appendonly": "no"}
    finally:
        client.close()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert deployment.password not in ps  # read from stdin, never on a command line


def test_run_role_distils_with_auto_actors_on_the_worker(deployment):
    env = deployment.env | {"RAY_ADDRESS": f"127.0.0.1:{deployment.gcs_port}"}
    args = [*SHORT, "--set", "head.run_name=run-role", "--set", "head.max_updates=200",
            "--set", "actors.num_actors=auto", "--set", "actors.num_cpus=1"]
    result = entrypoint("run", *args, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = deployment.runs / "run-role"
    summary = read_summary(run_dir)
    placement = summary["placement"]
    # auto: the worker's 3 CPUs in shares of actors.num_cpus=1, one held back for the evaluator
    # (the learner is pinned to the head's kd_learner)
    assert placement["actors"] == [deployment.worker_node] * 2
    assert placement["learner"] == deployment.head_node
    assert summary["learner_updates"] >= 200 and summary["states_labelled"] > 0
    assert "actors.num_actors=auto: 2 actors" in result.stderr
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["store"]["redis_url"] == "env:KD_REDIS_URL"
    assert deployment.password not in (run_dir / "config.yaml").read_text()


def test_ray_job_submit_runs_the_head_process_and_ray_job_stop_keeps_its_checkpoints(deployment):
    d = deployment
    dashboard = f"http://127.0.0.1:{d.dashboard_port}"
    job_id = f"kd-roles-{secrets.token_hex(4)}"
    run_dir = d.runs / "job-role"

    def job(verb: str, timeout: float = 120) -> str:
        shown = d.ray_cli("job", verb, "--address", dashboard, job_id, timeout=timeout)
        return shown.stdout + shown.stderr

    def snapshot_taken() -> bool:
        status = job("status")
        assert "FAILED" not in status and "SUCCEEDED" not in status, job("logs")[-4000:]
        return run_dir.is_dir() and any((run_dir / "checkpoints").glob("update-*"))

    # No --address and no stop condition that the test waits for: the driver finds the cluster
    # through RAY_ADDRESS, which Ray sets for jobs, and runs until stopped.
    command = ["bash", str(ENTRYPOINT), "run", *SHORT, "--set", "head.run_name=job-role",
               "--set", "actors.num_actors=1", "--set", "head.max_wall_s=1800"]
    submitted = d.ray_cli("job", "submit", "--address", dashboard, "--submission-id", job_id, "--no-wait",
                          "--", *command)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    try:
        wait_until(snapshot_taken, 600, "the job's first snapshot", poll_s=2)
    finally:
        stopped = job("stop", timeout=400)  # also when the wait failed: no driver outlives the test
    try:
        wait_until(lambda: "was stopped" in job("status"), 300, "the job to be stopped")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stopped}\n{job('status')}\n{job('logs')[-3000:]}") from None
    summary = read_summary(run_dir)  # SIGTERM acted like Ctrl-C: a last snapshot, evaluation, summary
    assert summary["stop_reason"] == "interrupted", job("logs")[-3000:]
    assert summary["learner_updates"] > 0 and any((run_dir / "checkpoints").glob("update-*"))
    placement = summary["placement"]
    assert placement["actors"] == [d.worker_node] and placement["learner"] == placement["head"] == d.head_node
    assert d.password not in job("logs")


def test_head_run_chain_runs_the_head_process_beside_rays_head_and_stops_on_sigterm(deployment):
    """What the compose ray-head service runs: `head run ARGS` on a second, one-node cluster. A
    SIGTERM (docker compose stop) reaches the run first, which snapshots and writes its summary."""
    d = deployment
    env = d.env | {"KD_RAY_PORT": str(free_port()), "KD_DASHBOARD_PORT": str(free_port()), "KD_NUM_CPUS": "2",
                   "KD_NODE_RESOURCES": '{"kd_actor": 1, "kd_learner": 1}', "KD_RAY_START_ARGS": d.ports_args()}
    run_dir = d.runs / "chain"
    args = [*SHORT, "--set", "head.run_name=chain", "--set", "actors.num_actors=1", "--set", "head.max_wall_s=1800"]
    with open(d.root / "chain.log", "w") as log:
        chain = subprocess.Popen(["bash", str(ENTRYPOINT), "head", "run", *args], env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    d.processes.append(chain)  # stopped by the fixture too if this test fails
    wait_until(lambda: chain.poll() is not None or any((run_dir / "checkpoints").glob("update-*")), 600,
               "the chained run's first snapshot")
    assert chain.poll() is None, (d.root / "chain.log").read_text()[-4000:]
    chain.send_signal(signal.SIGTERM)
    assert chain.wait(timeout=400) == 0, (d.root / "chain.log").read_text()[-4000:]
    summary = read_summary(run_dir)
    assert summary["stop_reason"] == "interrupted" and summary["learner_updates"] > 0
    wait_until(lambda: not group_alive(chain.pid), 60, "the chain's Ray head to stop")
