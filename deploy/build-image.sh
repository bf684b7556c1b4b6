#!/usr/bin/env bash
# Builds the kd_system CPU image, kd-system:cpu (or $KD_IMAGE:cpu), with podman or docker.
#
#   deploy/build-image.sh             from deploy/Dockerfile: pulls rayproject/ray and PyPI packages
#   deploy/build-image.sh --offline   without a registry, the way an air-gapped cluster builds:
#     1. base: a Debian bookworm rootfs from debootstrap, imported as kd-system-base:<hash>;
#     2. wheelhouse: every Python package as a wheel, downloaded on this host (pip download);
#     3. image: deploy/offline.Containerfile on that base, installing only from the wheelhouse,
#        with the build's network off.
#   Steps 1 and 2 are cached under $KD_IMAGE_CACHE (default ~/.cache/kd-system-image), keyed by a
#   hash of their inputs; step 3 reuses the engine's layer cache. An unchanged rebuild takes seconds.
#
# Options: --engine podman|docker (default: podman if installed, else docker), --tag NAME:TAG.
# The versions are deploy/Dockerfile's (ARG RAY_VERSION, ARG TORCH_VERSION): one place to change.
set -euo pipefail
cd "$(dirname "$0")/.."

# What goes into the offline image beside the project. tests/test_deploy_files.py checks that it
# covers everything deploy/Dockerfile installs (ray's image brings Python and procps there).
DEBIAN_PACKAGES="python3 python3-venv redis-server redis-tools procps"
PYTHON_EXTRAS="boto3 google-api-python-client"  # the `ray up` autoscaler's AWS / GCP clients
PROJECT_EXTRAS="cluster"
SUITE=bookworm
IMAGE_PYTHON=3.11  # bookworm's python3; the wheelhouse is for it, whatever python runs this script

fail() { echo "build-image: error: $*" >&2; exit 2; }
step() { echo "build-image: $*"; }

offline=0 engine="" tag="${KD_IMAGE:-kd-system}:cpu"
while [ $# -gt 0 ]; do
  case "$1" in
    --offline) offline=1 ;;
    --engine) [ $# -ge 2 ] || fail "--engine needs podman or docker"; engine="$2"; shift ;;
    --engine=*) engine="${1#*=}" ;;
    --tag) [ $# -ge 2 ] || fail "--tag needs NAME:TAG, e.g. kd-system:cpu"; tag="$2"; shift ;;
    --tag=*) tag="${1#*=}" ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown argument '$1': use --offline, --engine podman|docker, --tag NAME:TAG" ;;
  esac
  shift
done
[[ "$tag" == *:* ]] || fail "--tag must be NAME:TAG, got '$tag'"
if [ -z "$engine" ]; then
  if command -v podman >/dev/null; then engine=podman; elif command -v docker >/dev/null; then engine=docker
  else fail "neither podman nor docker is installed: run deploy/install-podman.sh (Debian/Ubuntu) or install Docker"; fi
fi
case "$engine" in podman|docker) command -v "$engine" >/dev/null || fail "$engine is not installed: install it or pass --engine with the other one" ;;
  *) fail "--engine must be podman or docker, got '$engine'" ;; esac

if [ "$offline" = 0 ]; then
  step "building $tag from deploy/Dockerfile with $engine (needs rayproject/ray and PyPI)"
  exec "$engine" build -f deploy/Dockerfile -t "$tag" .
fi

dockerfile_arg() {
  sed -n "s/^ARG $1=//p" deploy/Dockerfile | head -1 | grep . || fail "deploy/Dockerfile has no 'ARG $1=' line"
}
RAY_VERSION=$(dockerfile_arg RAY_VERSION)
TORCH_VERSION=$(dockerfile_arg TORCH_VERSION)
TORCH_INDEX_URL=$(dockerfile_arg TORCH_INDEX_URL)
CACHE=${KD_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kd-system-image}
PYTHON=${PYTHON:-python3}
MIRROR=${KD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$CACHE"
started=$SECONDS

key_of() { sha256sum | cut -c1-12; }

# ---- 1. base image ---------------------------------------------------------------------------------
base_key=$(echo "$SUITE minbase $DEBIAN_PACKAGES" | key_of)
base="kd-system-base:$SUITE-$base_key"
if "$engine" image inspect "$base" >/dev/null 2>&1; then
  step "1/3 base image $base: cached"
else
  [ "$(id -u)" -eq 0 ] || fail "debootstrap needs root: run as root (or with sudo) once; later builds reuse $base"
  command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || fail "debootstrap is not installed: apt-get install debootstrap (or run deploy/install-podman.sh)"
  rootfs="$CACHE/rootfs-$base_key"
  rm -rf "$rootfs"
  step "1/3 base image: debootstrap $SUITE (minbase + ${DEBIAN_PACKAGES// /, }) from $MIRROR"
  PATH="$PATH:/usr/sbin:/sbin" debootstrap --variant=minbase --include="${DEBIAN_PACKAGES// /,}" "$SUITE" "$rootfs" "$MIRROR" \
    >"$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log" >&2; fail "debootstrap failed (log: $CACHE/debootstrap.log); check that $MIRROR is reachable or set KD_DEBIAN_MIRROR"; }
  # Package caches and documentation are of no use in a container; a smaller base imports faster.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc \
         "$rootfs"/usr/share/man "$rootfs"/usr/share/info "$rootfs"/var/log/*.log
  tar -C "$rootfs" -c . | "$engine" import - "$base" >/dev/null
  rm -rf "$rootfs"
  step "1/3 base image $base imported"
fi

# ---- 2. wheelhouse ---------------------------------------------------------------------------------
requirements() {
  # torch's CPU build (its CUDA wheels are gigabytes larger), Ray as pinned, then pyproject's own
  # dependencies and extras, so the project's install inside the build finds everything here.
  echo "torch==$TORCH_VERSION+cpu"
  echo "ray==$RAY_VERSION"
  "$PYTHON" - "$PROJECT_EXTRAS" <<'EOF'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for req in project["dependencies"] + [r for extra in sys.argv[1].split() for r in project["optional-dependencies"][extra]]:
    print(req)
EOF
  "$PYTHON" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'
  printf '%s\n' $PYTHON_EXTRAS
}
"$PYTHON" -c 'import tomllib' 2>/dev/null || fail "$PYTHON has no tomllib (Python 3.11+ needed to read pyproject.toml): set PYTHON=python3.11"
reqs=$(requirements)
wheels_key=$(echo "$IMAGE_PYTHON $reqs" | key_of)
wheels="$CACHE/wheels-$wheels_key"
if [ -f "$wheels/requirements.txt" ]; then
  step "2/3 wheelhouse $wheels: cached ($(ls "$wheels"/*.whl | wc -l) wheels)"
else
  rm -rf "$wheels.partial"
  mkdir -p "$wheels.partial"
  echo "$reqs" >"$wheels.partial/requirements.in"
  # Wheels only (the image has no compiler), for bookworm's CPython and glibc 2.36.
  target=(--only-binary=:all: --python-version "$IMAGE_PYTHON" --implementation cp)
  # pip does not widen a given platform to the older glibc versions it runs on: list them, and the
  # legacy names some wheels (ray's) carry alone.
  for minor in 36 35 34 33 32 31 30 29 28 27 26 25 24 17 12 5; do target+=(--platform "manylinux_2_${minor}_x86_64"); done
  for legacy in manylinux2014 manylinux2010 manylinux1; do target+=(--platform "${legacy}_x86_64"); done
  step "2/3 wheelhouse: pip download torch $TORCH_VERSION (CPU), ray $RAY_VERSION and kd_system's dependencies"
  # torch first: from pip's configured sources if they hold the CPU build, else from its own index.
  "$PYTHON" -m pip download -q --no-deps "${target[@]}" -d "$wheels.partial" "torch==$TORCH_VERSION+cpu" 2>/dev/null ||
    "$PYTHON" -m pip download -q --no-deps "${target[@]}" -d "$wheels.partial" --extra-index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION+cpu" ||
    fail "could not download torch==$TORCH_VERSION+cpu from pip's sources or $TORCH_INDEX_URL: check the network or pip's index settings"
  if ! "$PYTHON" -m pip download "${target[@]}" -d "$wheels.partial" --find-links "$wheels.partial" \
      -r "$wheels.partial/requirements.in" >"$CACHE/pip-download.log" 2>&1; then
    grep -v "^WARNING: Location" "$CACHE/pip-download.log" | tail -15 >&2
    fail "pip download of the wheelhouse failed (log: $CACHE/pip-download.log): check the network or pip's index settings"
  fi
  # pip download judges environment markers by the Python running it, not by --python-version
  # (redis needs async-timeout below Python 3.11.3, bookworm's is 3.11.2). So resolve the list once
  # more with the base image's own pip, network off, and fetch whatever it finds missing.
  for round in 1 2 3 4 5 6 7 8; do
    if resolved=$("$engine" run --rm --network=none -v "$wheels.partial:/wheels:ro" "$base" sh -c \
        'python3 -m venv /tmp/v && /tmp/v/bin/pip install -q --dry-run --no-index --find-links /wheels -r /wheels/requirements.in' 2>&1); then
      break
    fi
    missing=$(sed -n 's/^ERROR: No matching distribution found for \([^;]*\).*/\1/p' <<<"$resolved" | head -1)
    [ -n "$missing" ] && [ "$round" -lt 8 ] || { tail -15 <<<"$resolved" >&2; fail "the wheelhouse does not install on $base (see above)"; }
    step "2/3 wheelhouse: adding $missing (the image's Python needs it; this host's does not)"
    "$PYTHON" -m pip download -q "${target[@]}" -d "$wheels.partial" --find-links "$wheels.partial" "$missing" \
      >>"$CACHE/pip-download.log" 2>&1 || fail "pip download of '$missing' failed (log: $CACHE/pip-download.log)"
  done
  # The Containerfile installs requirements.in; its layer is rebuilt when this list of wheels changes.
  { cat "$wheels.partial/requirements.in"; echo "# wheelhouse:"; (cd "$wheels.partial" && ls *.whl | sed 's/^/#   /'); } \
    >"$wheels.partial/requirements.txt"
  mv "$wheels.partial" "$wheels"
  step "2/3 wheelhouse $wheels: $(ls "$wheels"/*.whl | wc -l) wheels, $(du -sh "$wheels" | cut -f1)"
fi

# ---- 3. image --------------------------------------------------------------------------------------
context="$CACHE/context"
rm -rf "$context"
mkdir -p "$context/src"
cp "$wheels/requirements.txt" deploy/entrypoint.sh "$context/"
cp -al "$wheels" "$context/wheels" 2>/dev/null || cp -a "$wheels" "$context/wheels"
cp pyproject.toml README.md "$context/src/"
# kd_system's files only: no caches, no build leftovers, nothing from the working tree's runs or .env.
tar -C . -c --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' --exclude='.training*' kd_system | tar -C "$context/src" -x
# The layer cache of COPY hashes modification times too: fixed ones make unchanged files a cache hit.
find "$context/src" "$context/entrypoint.sh" "$context/requirements.txt" -exec touch -h -d @1 {} +
previous=$("$engine" image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
step "3/3 image $tag: $engine build on $base, offline"
"$engine" build --network=none -f deploy/offline.Containerfile --build-arg "BASE_IMAGE=$base" -t "$tag" "$context" \
  >"$CACHE/build.log" 2>&1 || { tail -30 "$CACHE/build.log" >&2; fail "the image build failed (log: $CACHE/build.log)"; }
rm -rf "$context"
# The image this tag named before, now untagged: remove it unless a container still uses it.
if [ -n "$previous" ] && [ "$previous" != "$("$engine" image inspect --format '{{.Id}}' "$tag")" ]; then
  "$engine" rmi "$previous" >/dev/null 2>&1 || true
fi
step "built $tag in $((SECONDS - started)) s ($("$engine" image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.1f GB", $1/1e9}'))"
