"""The deployment files, checked without Docker or a cloud: the compose file, the Dockerfile, the
Ray cluster launcher files (through Ray's own validation) and the KubeRay manifests all parse and
agree with each other, with the entrypoint's roles and with kd_system's config keys."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import pytest
import ray
import torch
import yaml

from deploy_helpers import ENTRYPOINT, REPO
from kd_system.config import load_config

ACTOR_RESOURCE, LEARNER_RESOURCE = "kd_actor", "kd_learner"
REDIS_PORT = "6380"
RUNS_DIR = "/home/ray/runs"
CLUSTER_FILES = ["cluster/aws.yaml", "cluster/gcp.yaml"]


def load_yaml(path: str):
    return yaml.safe_load((REPO / path).read_text())


def entrypoint_roles() -> set[str]:
    return set(re.findall(r"^\s+(\w+)\)\s+load_env_file;", ENTRYPOINT.read_text(), re.M))


def with_compose_defaults(text: str) -> str:
    """Compose's ${VAR:-default} interpolation, taking every default (what .env.example sets)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def run_settings(args: list[str]) -> tuple[str | None, list[str]]:
    """--config and --set values from a `kd-entrypoint run` argument list (both spellings)."""
    joined = []  # "--set X" as "--set=X"
    for arg in args:
        if joined and joined[-1] in ("--set", "--config"):
            joined[-1] += "=" + arg
        else:
            joined.append(arg)
    config = next((a.removeprefix("--config=") for a in joined if a.startswith("--config=")), None)
    return config, [a.removeprefix("--set=") for a in joined if a.startswith("--set=")]


# ---- docker compose -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose():
    return load_yaml("docker-compose.yml")


def test_compose_has_the_services_and_volume_the_entrypoint_expects(compose):
    services = compose["services"]
    assert set(services) == {"redis", "ray-head", "worker", "learner-gpu", "tensorboard"}
    assert set(compose["volumes"]) == {"runs"}
    roles = entrypoint_roles()
    assert roles == {"redis", "head", "worker", "run", "health"}
    for name in ("redis", "ray-head", "worker", "learner-gpu"):
        assert services[name]["command"][0] in roles, name
    assert services["ray-head"]["command"][:2] == ["head", "run"]
    for name in ("redis", "ray-head"):
        test = services[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "kd-entrypoint", "health"] and test[3] in {"redis", "head"}
    assert services["ray-head"]["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("worker", "learner-gpu"):
        assert services[name]["depends_on"]["ray-head"]["condition"] == "service_healthy"
        assert services[name]["environment"]["KD_RAY_HEAD"] == "ray-head:6379"
    assert services["ray-head"]["environment"]["KD_REDIS_HOST"] == "redis"
    assert services["redis"]["environment"]["KD_REDIS_PORT"] == services["ray-head"]["environment"]["KD_REDIS_PORT"] == REDIS_PORT


def test_compose_runs_volume_is_where_the_image_writes_runs(compose):
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert f"ENV KD_RUNS_DIR={RUNS_DIR}" in dockerfile
    assert f"runs:{RUNS_DIR}" in compose["services"]["ray-head"]["volumes"]
    assert f"runs:{RUNS_DIR}:ro" in compose["services"]["tensorboard"]["volumes"]
    assert RUNS_DIR in compose["services"]["tensorboard"]["command"]


def test_compose_places_actors_on_workers_and_the_learner_on_the_gpu_service(compose):
    services = compose["services"]
    assert json.loads(services["worker"]["environment"]["KD_NODE_RESOURCES"]) == {ACTOR_RESOURCE: 1}
    gpu = services["learner-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["image"].endswith(":gpu")
    assert json.loads(gpu["environment"]["KD_NODE_RESOURCES"]) == {LEARNER_RESOURCE: 1}
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    command = services["ray-head"]["command"]
    assert f"--set=actors.ray_resource={ACTOR_RESOURCE}" in command
    assert any(arg.startswith("--set=learner.ray_resource=${KD_LEARNER_RESOURCE") for arg in command)


def test_compose_publishes_only_on_localhost_and_takes_secrets_from_env(compose):
    text = (REPO / "docker-compose.yml").read_text()
    for service in compose["services"].values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
    for secret in ("REDIS_PASSWORD", "RAY_AUTH_TOKEN"):
        # required (${VAR:?message}): compose refuses to start without them; no default is written down
        assert re.search(r"\$\{" + secret + r":\?", text), secret
        assert not re.search(r"\$\{" + secret + r":-", text), secret
    redis = compose["services"]["redis"]
    assert redis["command"] == ["redis"] and "mem_limit" in redis and "KD_REDIS_MAXMEMORY" in redis["environment"]


def test_compose_run_settings_are_valid_kd_system_settings():
    compose = yaml.safe_load(with_compose_defaults((REPO / "docker-compose.yml").read_text()))
    config_name, settings = run_settings(compose["services"]["ray-head"]["command"][2:])
    config = load_config(config_name, settings)
    assert config.actors.num_actors == "auto" and config.actors.ray_resource == ACTOR_RESOURCE
    assert config.learner.ray_resource is None  # without the gpu profile the learner may go anywhere
    assert config.head.run_name is None


def test_compose_resume_override_resumes_the_named_run_from_the_runs_volume():
    override = load_yaml("deploy/compose.resume.yml")
    assert set(override["services"]) == {"ray-head"}
    command = override["services"]["ray-head"]["command"]
    assert command[:2] == ["head", "run"] and len(command) == 3
    assert command[2].startswith(f"--resume={RUNS_DIR}/${{KD_RUN_NAME:?")  # required, no default


def test_env_example_names_every_compose_variable_and_holds_no_secret():
    compose_vars = set(re.findall(r"\$\{(\w+)", (REPO / "docker-compose.yml").read_text()
                                  + (REPO / "deploy" / "compose.resume.yml").read_text()))
    example = dict(line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert compose_vars <= set(example), sorted(compose_vars - set(example))
    assert example["REDIS_PASSWORD"] == "" and example["RAY_AUTH_TOKEN"] == ""
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", ".env"])
    assert ignored.returncode == 0, ".env must be git-ignored"
    assert ".env" in (REPO / ".dockerignore").read_text().split()


# ---- the image ---------------------------------------------------------------------------------

def test_dockerfile_pins_the_ray_python_and_torch_the_project_is_tested_with(compose):
    text = (REPO / "deploy" / "Dockerfile").read_text()
    python_tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert f"ARG RAY_IMAGE=rayproject/ray:{ray.__version__}-{python_tag}\n" in text
    assert f"ARG RAY_VERSION={ray.__version__}\n" in text
    assert f"ARG TORCH_VERSION={torch.__version__.split('+')[0]}\n" in text
    gpu_args = compose["services"]["learner-gpu"]["build"]["args"]
    assert gpu_args["RAY_IMAGE"] == f"rayproject/ray:{ray.__version__}-{python_tag}-gpu"
    assert 'ENTRYPOINT ["kd-entrypoint"]' in text and "deploy/entrypoint.sh /usr/local/bin/kd-entrypoint" in text


# ---- Ray cluster launcher (ray up) ----------------------------------------------------------------

def ray_validate(config: dict) -> dict:
    """What `ray up` does to a cluster file before touching a cloud: fill in defaults, then check
    the result against Ray's cluster schema and its own consistency rules."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("path", CLUSTER_FILES)
def test_cluster_file_passes_rays_validation(path):
    prepared = ray_validate(load_yaml(path))
    assert prepared["head_node_type"] == "head"


@pytest.mark.parametrize("path", CLUSTER_FILES)
def test_rays_validation_rejects_a_broken_cluster_file(path):
    import jsonschema

    broken = load_yaml(path)
    broken["available_node_types"]["cpu_actors"]["resources"]["CPU"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(broken)


@pytest.mark.parametrize("path", CLUSTER_FILES)
def test_cluster_file_node_types_offer_the_placement_resources(path):
    config = load_yaml(path)
    types = config["available_node_types"]
    head, actors, learner = types["head"], types["cpu_actors"], types["gpu_learner"]
    assert ACTOR_RESOURCE not in head["resources"] and LEARNER_RESOURCE not in head["resources"]
    assert actors["resources"].get(ACTOR_RESOURCE) == 1 and "GPU" not in actors["resources"]
    assert actors["max_workers"] > actors["min_workers"] >= 1  # autoscales, and auto finds actors
    assert learner["resources"].get(LEARNER_RESOURCE) == 1 and learner["resources"].get("GPU", 0) >= 1
    assert config["docker"]["image"].endswith(":cpu") and learner["docker"]["worker_image"].endswith(":gpu")
    node_config = actors["node_config"]
    cheap = node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot" or \
        {"preemptible": True} in node_config.get("scheduling", [])
    assert cheap, "actor nodes should be spot / preemptible"


@pytest.mark.parametrize("path", CLUSTER_FILES)
def test_cluster_file_starts_nodes_through_the_entrypoint_with_secrets_from_env(path):
    config = load_yaml(path)
    assert config["file_mounts"] == {"~/kd.env": ".env"}
    head_commands = " ; ".join(config["head_start_ray_commands"])
    worker_commands = " ; ".join(config["worker_start_ray_commands"])
    assert "kd-entrypoint redis" in head_commands and "kd-entrypoint head" in head_commands
    assert "--autoscaling-config=$HOME/ray_bootstrap_config.yaml" in head_commands
    assert "kd-entrypoint worker" in worker_commands
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        assert subprocess.run(["bash", "-n", "-c", command]).returncode == 0, command
        if "kd-entrypoint" in command:
            assert "KD_ENV_FILE=~/kd.env" in command and "KD_DETACH=1" in command
    assert not re.search(r"(?i)(password|token)\s*[:=]\s*\S", (REPO / path).read_text())


# ---- KubeRay ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kube():
    objects = []
    for path in sorted((REPO / "cluster" / "kuberay").glob("*.yaml")):
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects}


def env_of(container: dict) -> dict:
    return {item["name"]: item for item in container.get("env", [])}


def start_resources(group: dict) -> dict:
    # KubeRay passes rayStartParams.resources to `ray start --resources` as a quoted JSON string
    return json.loads(group["rayStartParams"]["resources"].strip('"').replace('\\"', '"'))


def test_kuberay_manifests_have_the_expected_kinds(kube):
    assert set(kube) == {("RayCluster", "kd-cluster"), ("RayJob", "kd-distill"), ("Deployment", "kd-redis"),
                         ("Service", "kd-redis"), ("PersistentVolumeClaim", "kd-runs")}
    assert kube["RayCluster", "kd-cluster"]["apiVersion"] == kube["RayJob", "kd-distill"]["apiVersion"] == "ray.io/v1"


def test_kuberay_raycluster_places_actors_and_learner_and_keeps_runs(kube):
    spec = kube["RayCluster", "kd-cluster"]["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"] == {"mode": "token"} and spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]["template"]["spec"]
    (container,) = head["containers"]
    assert container["image"].endswith(":cpu")
    env = env_of(container)
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "kd-redis", "key": "password"}
    assert env["KD_REDIS_URL"]["value"] == f"redis://:$(REDIS_PASSWORD)@kd-redis:{REDIS_PORT}/0"
    assert env["KD_RUNS_DIR"]["value"] == RUNS_DIR
    assert {"name": "runs", "mountPath": RUNS_DIR} in container["volumeMounts"]
    assert {"name": "runs", "persistentVolumeClaim": {"claimName": "kd-runs"}} in head["volumes"]
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    actors, learner = groups["cpu-actors"], groups["gpu-learner"]
    assert start_resources(actors) == {ACTOR_RESOURCE: 1} and actors["maxReplicas"] > actors["minReplicas"]
    assert start_resources(learner) == {LEARNER_RESOURCE: 1}
    (gpu_container,) = learner["template"]["spec"]["containers"]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == 1 and gpu_container["image"].endswith(":gpu")


def test_kuberay_rayjob_runs_a_distillation_on_that_cluster(kube):
    job = kube["RayJob", "kd-distill"]["spec"]
    assert job["clusterSelector"] == {"ray.io/cluster": "kd-cluster"}
    assert job["shutdownAfterJobFinishes"] is False
    args = job["entrypoint"].split()
    assert args[:2] == ["kd-entrypoint", "run"]
    config_name, settings = run_settings(args[2:])
    config = load_config(config_name, settings)  # every setting is a valid kd_system setting
    assert config.actors.ray_resource == ACTOR_RESOURCE and config.learner.ray_resource == LEARNER_RESOURCE
    assert config.head.run_name


def test_kuberay_redis_runs_the_entrypoint_role_with_the_secret(kube):
    deployment = kube["Deployment", "kd-redis"]["spec"]["template"]["spec"]
    (container,) = deployment["containers"]
    assert container["args"] == ["redis"]
    assert env_of(container)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "kd-redis"
    assert container["readinessProbe"]["exec"]["command"] == ["kd-entrypoint", "health", "redis"]
    service = kube["Service", "kd-redis"]["spec"]
    assert service["ports"][0]["port"] == int(REDIS_PORT)
    assert service["selector"] == kube["Deployment", "kd-redis"]["spec"]["selector"]["matchLabels"]


def test_no_deployment_file_carries_a_secret():
    files = ["docker-compose.yml", ".env.example", *CLUSTER_FILES, *(
        str(p.relative_to(REPO)) for p in (REPO / "cluster" / "kuberay").glob("*.yaml"))]
    for path in files:
        text = (REPO / path).read_text()
        assert not re.search(r"[0-9a-f]{32,}", text), path  # no generated password or token pasted in


def shell_words(script: str, name: str) -> list[str]:
    """The words of a NAME="a b c" line in a shell script."""
    return re.search(rf'^{name}="([^"]*)"', script, re.M).group(1).split()


def test_offline_image_installs_what_the_dockerfile_installs():
    """deploy/build-image.sh --offline builds from deploy/offline.Containerfile on a debootstrap
    base; both images must hold the same packages and look the same to compose and the entrypoint."""
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    script = (REPO / "deploy" / "build-image.sh").read_text()
    containerfile = (REPO / "deploy" / "offline.Containerfile").read_text()
    apt = re.search(r"apt-get install -y --no-install-recommends ([^\n&\\]+)", dockerfile).group(1).split()
    assert set(apt) <= set(shell_words(script, "DEBIAN_PACKAGES"))
    pip = re.search(r'pip install --no-cache-dir --constraint \S+ "/tmp/kd_src\[([\w,]+)\]" ([^\n\\]+)', dockerfile)
    extras = pip.group(1).split(",")
    assert extras == shell_words(script, "PROJECT_EXTRAS")
    assert f'"/tmp/kd_src[{",".join(extras)}]"' in containerfile
    assert set(pip.group(2).split()) == set(shell_words(script, "PYTHON_EXTRAS"))
    # the pins are read from the Dockerfile's ARG lines, so the two cannot drift apart
    for arg in ("RAY_VERSION", "TORCH_VERSION", "TORCH_INDEX_URL"):
        assert f"ARG {arg}=" in dockerfile and f"=$(dockerfile_arg {arg})" in script
    for line in ("ENV KD_RUNS_DIR=/home/ray/runs", "RUN mkdir -p /home/ray/runs", "WORKDIR /home/ray",
                 'ENTRYPOINT ["kd-entrypoint"]', 'CMD ["bash"]', "USER ray"):
        assert line in dockerfile and line in containerfile, line
    assert "entrypoint.sh /usr/local/bin/kd-entrypoint" in dockerfile
    assert "COPY entrypoint.sh /usr/local/bin/kd-entrypoint" in containerfile
    assert "useradd --uid 1000 --gid users" in containerfile  # rayproject/ray's user and group
