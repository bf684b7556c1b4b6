#!/usr/bin/env bash
# What deploy/compose-demo.sh needs on a Debian/Ubuntu machine without Docker: podman, runc,
# debootstrap (the offline image's base) and podman-compose 1.6 from PyPI, in its own virtual
# environment (Debian's 1.0.3 returns 255 from --abort-on-container-exit and fails on
# network_mode: host). Then the containers.conf settings this machine needs, and only those.
# Safe to run again: it installs only what is missing. Used by .ci/run.
set -euo pipefail

COMPOSE_SPEC='podman-compose>=1.6,<1.7'
COMPOSE_VENV=${KD_PODMAN_COMPOSE_VENV:-/opt/podman-compose}
DROP_IN=/etc/containers/containers.conf.d/50-kd-system.conf

fail() { echo "install-podman: error: $*" >&2; exit 2; }
note() { echo "install-podman: $*"; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
command -v apt-get >/dev/null || fail "apt-get not found: this script is for Debian/Ubuntu; install podman, runc, debootstrap and $COMPOSE_SPEC by hand"

missing=()
for tool in podman:podman runc:runc debootstrap:debootstrap; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  note "installing ${missing[*]} with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

compose_ok() {
  local version
  version=$(podman-compose version 2>/dev/null | sed -n 's/^podman-compose version \([0-9.]*\).*/\1/p')
  [[ "$version" =~ ^1\.([6-9]|[1-9][0-9])\. ]]
}
if ! compose_ok; then
  note "installing $COMPOSE_SPEC into $COMPOSE_VENV"
  $SUDO python3 -m venv "$COMPOSE_VENV"
  $SUDO "$COMPOSE_VENV/bin/python" -m pip install -q "$COMPOSE_SPEC"
  $SUDO ln -sf "$COMPOSE_VENV/bin/podman-compose" /usr/local/bin/podman-compose
  compose_ok || fail "podman-compose on PATH is not 1.6 or newer: put /usr/local/bin before $(command -v podman-compose)"
fi

# crun (podman's default runtime on Debian) cannot run containers on hybrid cgroups (v1
# controllers plus a v2 mount); runc can.
settings=()
if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] && mountpoint -q /sys/fs/cgroup/unified 2>/dev/null; then
  settings+=("[engine]" 'runtime = "runc"')
fi
# Rootful podman asks for nofile=1048576 in every container; a machine whose own hard limit is
# lower refuses that setrlimit, so containers get limits within what the machine allows.
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt 1048576 ]; then
  nofile=$(( $(ulimit -Hn) < 20000 ? $(ulimit -Hn) : 20000 ))
  settings+=("[containers]" "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=32768:32768\"]")
fi
if [ ${#settings[@]} -gt 0 ]; then
  wanted=$(printf '%s\n' "# written by deploy/install-podman.sh for this machine's cgroups and limits" "${settings[@]}")
  if [ "$(cat "$DROP_IN" 2>/dev/null)" != "$wanted" ]; then
    note "writing $DROP_IN: ${settings[*]}"
    $SUDO mkdir -p "$(dirname "$DROP_IN")"
    echo "$wanted" | $SUDO tee "$DROP_IN" >/dev/null
  fi
fi
note "ready: $(podman --version), $(podman-compose version 2>/dev/null | head -1), runtime $(podman info --format '{{.Host.OCIRuntime.Name}}' 2>/dev/null)"
