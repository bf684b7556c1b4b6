#!/usr/bin/env bash
# One-machine set-up on Debian/Ubuntu: redis-server from apt, then a virtual environment in
# .venv with torch (installed first, so pip takes the CPU wheel instead of pulling CUDA) and
# kd_system with its test extras. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
VENV=${VENV:-.venv}

if ! command -v redis-server >/dev/null 2>&1; then
  echo "install-local: installing redis-server with apt-get"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
  # kd-system starts its own private redis-server per run; the distro's service is not needed.
  ($SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true)
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "install-local: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "install-local: installing $TORCH_SPEC"
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
fi
echo "install-local: installing kd_system and its dependencies"
"$VENV/bin/python" -m pip install -q -e ".[test,cluster]"
echo "install-local: ready ($("$VENV/bin/kd-system" --help >/dev/null && echo kd-system OK))"
