"""docker-compose.yml run for real: deploy/compose-demo.sh builds the image if it is missing (the
offline build, deploy/build-image.sh --offline), brings up Redis, the Ray head and the workers as
containers, runs a CartPole distillation through the head service and reads the run back from the
`runs` volume. Once with 2 workers, once with 3 of which one is killed mid-run. Where neither
podman with podman-compose nor a running Docker is installed, these skip (.ci/run installs podman
on Debian machines: deploy/install-podman.sh)."""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from deploy_helpers import REPO

DEMO = REPO / "deploy" / "compose-demo.sh"
BUILD = REPO / "deploy" / "build-image.sh"
IMAGE = "kd-system:cpu"


def container_engine() -> str | None:
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return "docker"
    if shutil.which("podman") and shutil.which("podman-compose"):
        return "podman"
    return None


def cannot_build() -> str | None:
    """Why the offline image cannot be built here, if it cannot: its debootstrap base needs root."""
    if ENGINE == "podman" and os.geteuid() != 0 and subprocess.run(
            ["podman", "image", "exists", IMAGE], capture_output=True).returncode != 0:
        return "the offline image build's debootstrap needs root, and no kd-system:cpu image is there to use"
    return None


ENGINE = container_engine()
needs_engine = pytest.mark.skipif(
    ENGINE is None or cannot_build() is not None,
    reason=("no container engine: neither podman with podman-compose nor a running Docker (on Debian, "
            "deploy/install-podman.sh installs podman)" if ENGINE is None else str(cannot_build())))


def run_demo(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    """The demo under a project of its own, with a fresh env file; its volume is removed after."""
    project = f"kd-test-{uuid.uuid4().hex[:6]}"
    env_file = tmp_path / "demo.env"
    try:
        # --build: the image of this checkout (the offline build; cached, it takes seconds)
        result = subprocess.run(["bash", str(DEMO), "--build", "--project", project, "--env-file", str(env_file), *args],
                                capture_output=True, text=True, timeout=3000)
    finally:
        subprocess.run([ENGINE, "volume", "rm", "-f", f"{project}_runs"], capture_output=True)
    return result, env_file.read_text() if env_file.exists() else ""


def secrets_of(env_text: str) -> list[str]:
    values = dict(line.split("=", 1) for line in env_text.splitlines() if "=" in line and not line.startswith("#"))
    return [values["REDIS_PASSWORD"], values["RAY_AUTH_TOKEN"]]


@pytest.mark.slow
@needs_engine
def test_demo_with_two_workers_reaches_the_target_and_keeps_the_run_on_the_volume(tmp_path):
    result, env_text = run_demo(tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-20000:]  # every service's last 40 lines, the head's too
    assert "starting 2 workers" in out and "PASS" in out
    assert "stop_reason='target score" in out
    assert "summary.json and checkpoints are on" in out and "actors ran on the worker containers" in out
    # The secrets came from the env file the demo wrote, at run time: none is in the image.
    password, token = secrets_of(env_text)
    assert len(password) >= 32 and len(token) >= 64
    inspected = "".join(subprocess.run([ENGINE, *command, IMAGE], capture_output=True, text=True).stdout
                        for command in (["image", "inspect"], ["history", "--no-trunc"]))
    assert "kd-entrypoint" in inspected  # the commands did look at the image
    assert password not in inspected and token not in inspected
    assert "REDIS_PASSWORD" not in inspected and "RAY_AUTH_TOKEN" not in inspected


@pytest.mark.slow
@needs_engine
def test_demo_with_three_workers_goes_on_after_one_is_killed(tmp_path):
    result, _ = run_demo(tmp_path, "--workers", "3", "--kill-worker")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-20000:]  # every service's last 40 lines, the head's too
    assert "starting 3 workers" in out and "which holds collectors" in out
    assert "starting replacement" in out  # the head replaced a collector lost with the worker
    assert "then 10 more evaluations" in out and "component_deaths=0" not in out
    assert "the run outlived" in out and "PASS" in out


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers must be a whole number of 1 or more"),
    (["--workers", "1", "--kill-worker"], "--kill-worker needs --workers 2 or more"),
    (["--engine", "lxc"], "--engine must be docker or podman"),
    (["--frobnicate"], "unknown argument '--frobnicate'"),
])
def test_demo_refuses_bad_arguments_with_one_line(args, message):
    result = subprocess.run(["bash", str(DEMO), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert message in line


@pytest.mark.parametrize("args, message", [
    (["--engine", "lxc"], "--engine must be podman or docker"),
    (["--tag", "untagged"], "--tag must be NAME:TAG"),
    (["--online"], "unknown argument '--online'"),
])
def test_build_refuses_bad_arguments_with_one_line(args, message):
    result = subprocess.run(["bash", str(BUILD), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert message in line
