#!/usr/bin/env bash
# kd_system's deployment entrypoint: one script with one role per process, used the same way by
# the Docker image (docker-compose.yml), the Ray cluster launcher files (cluster/aws.yaml,
# cluster/gcp.yaml), the KubeRay manifests and the CI test that runs every role as local processes.
#
#   redis                 the replay-store Redis (password from REDIS_PASSWORD, no persistence)
#   head [run ARGS...]    the Ray head; with "run ARGS", also run a distillation on it and keep the
#                         head up afterwards (so the dashboard stays readable) until stopped
#   worker                a Ray worker that joins KD_RAY_HEAD (HOST:PORT)
#   run [ARGS...]         `kd-system run ARGS $KD_RUN_ARGS` on a node of a running cluster, with
#                         the replay store and runs directory of this deployment
#   health redis|head     exit 0 when that service answers (container healthchecks)
#   anything else         is run as a command, with the settings below (`docker run IMAGE bash`,
#                         the container of `ray up`, `kd-entrypoint ray status` on a node)
#
# Settings are environment variables (documented in .env.example); KD_ENV_FILE names a file of
# NAME=VALUE lines to read them from. redis, head and worker stay in the foreground, as a container
# wants, unless KD_DETACH=1: then they start in the background and return, as `ray up` commands want.
set -euo pipefail

fail() { echo "kd-entrypoint: error: $*" >&2; exit 2; }
note() { echo "kd-entrypoint: $*" >&2; }

load_env_file() {
  [ -n "${KD_ENV_FILE:-}" ] || return 0
  [ -r "$KD_ENV_FILE" ] || fail "KD_ENV_FILE=$KD_ENV_FILE cannot be read: copy .env.example there and fill it in"
  # Read NAME=value lines the way docker compose does, without running the file as shell code.
  # Variables already set in the environment win, as they do for compose.
  local line name value
  while IFS= read -r line || [ -n "$line" ]; do
    [[ "$line" =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
    name="${BASH_REMATCH[1]}"
    value="${BASH_REMATCH[2]}"
    if [[ "$value" =~ ^\"(.*)\"$ ]] || [[ "$value" =~ ^\'(.*)\'$ ]]; then value="${BASH_REMATCH[1]}"; fi
    [ -n "${!name+set}" ] || export "$name=$value"
  done < "$KD_ENV_FILE"
}

detached() { [ "${KD_DETACH:-0}" = 1 ]; }

check_redis_password() {
  local password="${REDIS_PASSWORD:-}"
  [ -n "$password" ] || fail "REDIS_PASSWORD is empty: set it in .env (see .env.example), e.g. from: openssl rand -hex 24"
  # The password goes into redis:// URLs and a redis.conf line, so keep it to URL-safe characters.
  [[ "$password" =~ ^[A-Za-z0-9._~-]{16,}$ ]] ||
    fail "REDIS_PASSWORD must be 16 or more letters, digits, '.', '_', '~' or '-'; generate one with: openssl rand -hex 24"
}

this_node_ip() {
  # Ray's own choice of this node's address, so Redis is named the way the cluster names the node.
  python -c 'import ray.util; print(ray.util.get_node_ip_address())'
}

export_redis_url() {
  # KD_REDIS_URL wins; else build it from REDIS_PASSWORD. Processes get the URL through the
  # environment only: runs name it as store.redis_url=env:KD_REDIS_URL.
  if [ -z "${KD_REDIS_URL:-}" ] && [ -n "${REDIS_PASSWORD:-}" ]; then
    check_redis_password
    local host="${KD_REDIS_HOST:-$(this_node_ip)}"
    export KD_REDIS_URL="redis://:${REDIS_PASSWORD}@${host}:${KD_REDIS_PORT:-6380}/0"
  fi
}

setup_ray_auth() {
  # Ray token authentication: every node and every client needs the same token.
  export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
  if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ] && [ -z "${RAY_AUTH_TOKEN_PATH:-}" ]; then
    fail "RAY_AUTH_TOKEN is empty: set it in .env (generate one with: openssl rand -hex 32), or set RAY_AUTH_MODE=disabled on a private network only"
  fi
}

ray_node_args() {
  # Appends this node's resources and any extra `ray start` arguments to the array named $1.
  local -n node_args_into="$1"
  [ -z "${KD_NUM_CPUS:-}" ] || node_args_into+=(--num-cpus "$KD_NUM_CPUS")
  [ -z "${KD_NUM_GPUS:-}" ] || node_args_into+=(--num-gpus "$KD_NUM_GPUS")
  if [ -n "${KD_NODE_RESOURCES:-}" ]; then
    python -c 'import json, sys; r = json.loads(sys.argv[1]); assert isinstance(r, dict) and all(isinstance(v, (int, float)) for v in r.values())' \
      "$KD_NODE_RESOURCES" 2>/dev/null ||
      fail "KD_NODE_RESOURCES must be a JSON object of numbers, e.g. {\"kd_actor\": 1}; got: $KD_NODE_RESOURCES"
    node_args_into+=(--resources "$KD_NODE_RESOURCES")
  fi
  # shellcheck disable=SC2206  # split on purpose: several extra arguments in one variable
  [ -z "${KD_RAY_START_ARGS:-}" ] || node_args_into+=($KD_RAY_START_ARGS)
}

role_redis() {
  check_redis_password
  command -v redis-server >/dev/null || fail "redis-server is not installed here: apt-get install redis-server"
  local port="${KD_REDIS_PORT:-6380}"
  if detached && REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
    note "redis already answers on port $port; leaving it running"
    return 0
  fi
  # noeviction: the store bounds itself (a ring of store.capacity_states); evicting a key would
  # silently drop a slot, the chunk counter or the student weights. Running out of memory instead
  # fails the write with a message naming maxmemory. No RDB/AOF: replay data refills in minutes and
  # snapshots live in the runs directory; a fork for RDB would double memory under writes.
  local args=(--port "$port" --bind "${KD_REDIS_BIND:-0.0.0.0}"
              --maxmemory "${KD_REDIS_MAXMEMORY:-1gb}" --maxmemory-policy noeviction
              --save "" --appendonly no --dir "${TMPDIR:-/tmp}")
  if detached; then
    args+=(--daemonize yes --pidfile "${TMPDIR:-/tmp}/kd-redis-$port.pid" --logfile "${TMPDIR:-/tmp}/kd-redis-$port.log")
  else
    args+=(--daemonize no --logfile "")
  fi
  # The password is read from stdin ("-" config file), so it never shows in the process list.
  exec redis-server - "${args[@]}" <<<"requirepass $REDIS_PASSWORD"
}

head_args() {
  local -n head_args_into="$1"
  # shellcheck disable=SC2034  # a nameref: this fills the caller's array
  head_args_into=(start --head --port "${KD_RAY_PORT:-6379}" --disable-usage-stats
        --dashboard-host "${KD_DASHBOARD_HOST:-0.0.0.0}" --dashboard-port "${KD_DASHBOARD_PORT:-8265}")
  ray_node_args head_args_into
}

prepare_head_env() {
  setup_ray_auth
  ulimit -n 65536 2>/dev/null || true  # Ray holds many sockets; not every container may raise it
  # `ray job stop` sends SIGTERM; kd-system then takes a last snapshot, evaluates and writes the
  # summary, which takes longer than Ray's default 3 s before SIGKILL.
  export RAY_JOB_STOP_WAIT_TIME_S="${RAY_JOB_STOP_WAIT_TIME_S:-300}"
  export_redis_url  # Ray jobs started on this head inherit it
}

role_head() {
  prepare_head_env
  local args
  head_args args
  if [ $# -gt 0 ]; then
    [ "$1" = run ] || fail "after 'head' only 'run [ARGS]' may follow, got '$1'"
    shift
    head_then_run "${args[@]}" -- "$@"
  fi
  if detached; then exec ray "${args[@]}"; fi
  exec ray "${args[@]}" --block
}

wait_for_head() {
  local address="$1" ray_pid="$2" deadline=$((SECONDS + 300))
  until timeout 10 ray health-check --address "$address" >/dev/null 2>&1; do
    kill -0 "$ray_pid" 2>/dev/null || fail "the Ray head exited during start-up; see the lines above"
    [ "$SECONDS" -lt "$deadline" ] || fail "the Ray head at $address did not answer within 5 minutes; see the lines above"
    sleep 0.5
  done
}

head_then_run() {
  local ray_args=() run_args=()
  while [ "$1" != -- ]; do ray_args+=("$1"); shift; done
  shift
  run_args=("$@")
  ray "${ray_args[@]}" --block &
  local ray_pid=$! run_pid=""
  # A stop (docker compose stop/down) reaches this script first: pass it to the run, which then
  # snapshots, evaluates and writes its summary, and only then stop Ray.
  trap 'stop_head_and_run "$run_pid" "$ray_pid"' TERM INT
  wait_for_head "127.0.0.1:${KD_RAY_PORT:-6379}" "$ray_pid"
  RAY_ADDRESS="127.0.0.1:${KD_RAY_PORT:-6379}" role_run "${run_args[@]}" &
  run_pid=$!
  local status=0
  wait "$run_pid" || status=$?
  note "the distillation exited with status $status; the Ray head stays up for the dashboard until this container stops"
  wait "$ray_pid" || true
  exit "$status"
}

stop_head_and_run() {
  local run_pid="$1" ray_pid="$2"
  if [ -n "$run_pid" ] && kill -0 "$run_pid" 2>/dev/null; then
    note "stopping the distillation (last snapshot, final evaluation, summary)"
    kill -TERM "$run_pid" 2>/dev/null || true
    wait "$run_pid" 2>/dev/null || true
  fi
  kill -TERM "$ray_pid" 2>/dev/null || true
  wait "$ray_pid" 2>/dev/null || true
  exit 0
}

role_worker() {
  setup_ray_auth
  ulimit -n 65536 2>/dev/null || true
  # `ray up` names the head in RAY_HEAD_IP; compose and tests give KD_RAY_HEAD.
  local head="${KD_RAY_HEAD:-${RAY_HEAD_IP:+$RAY_HEAD_IP:${KD_RAY_PORT:-6379}}}"
  [ -n "$head" ] || fail "KD_RAY_HEAD is empty: set it to the Ray head's HOST:PORT, e.g. ray-head:6379"
  local args=(start --address "$head" --disable-usage-stats)
  ray_node_args args
  if detached; then exec ray "${args[@]}"; fi
  exec ray "${args[@]}" --block
}

role_run() {
  setup_ray_auth
  export_redis_url
  local preset=()
  if [ -n "${KD_REDIS_URL:-}" ]; then
    preset+=(--set store.redis_url=env:KD_REDIS_URL)
  else
    note "no REDIS_PASSWORD or KD_REDIS_URL: the run starts a private Redis that only this node can reach"
  fi
  [ -z "${KD_RUNS_DIR:-}" ] || preset+=(--set "head.runs_dir=$KD_RUNS_DIR")
  local extra=()
  # shellcheck disable=SC2206  # split on purpose: KD_RUN_ARGS holds several arguments
  [ -z "${KD_RUN_ARGS:-}" ] || extra=($KD_RUN_ARGS)
  # Inside a Ray job (and the head+run chain) RAY_ADDRESS names the cluster; on a head node
  # reached by ssh, `auto` finds the local one.
  local arg address=(--address auto)
  for arg in "$@" "${extra[@]}"; do
    case "$arg" in --address|--address=*) address=() ;; esac
  done
  [ -z "${RAY_ADDRESS:-}" ] || address=()
  exec kd-system run "${preset[@]}" "${address[@]}" "$@" "${extra[@]}"
}

role_health() {
  case "${1:-}" in
    redis)
      check_redis_password
      REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -h 127.0.0.1 -p "${KD_REDIS_PORT:-6380}" ping | grep -q PONG ;;
    head)
      setup_ray_auth
      # bounded: ray health-check retries an unreachable GCS for about 40 s
      timeout "${KD_HEALTH_TIMEOUT_S:-10}" ray health-check --address "127.0.0.1:${KD_RAY_PORT:-6379}" >/dev/null 2>&1 ;;
    *)
      fail "health takes redis or head, got '${1:-}'" ;;
  esac
}

pass_through() {
  # Any other command, with the deployment's settings: `KD_ENV_FILE=~/kd.env kd-entrypoint ray status`
  # works on a `ray up` node, and `docker run IMAGE bash` starts a shell.
  [ -z "${RAY_AUTH_TOKEN:-}" ] || export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
  exec "$@"
}

main() {
  [ $# -gt 0 ] || fail "name a role: redis, head [run ARGS], worker, run [ARGS] or health redis|head"
  local role="$1"
  shift
  case "$role" in
    redis)  load_env_file; role_redis "$@" ;;
    head)   load_env_file; role_head "$@" ;;
    worker) load_env_file; role_worker "$@" ;;
    run)    load_env_file; role_run "$@" ;;
    health) load_env_file; role_health "$@" ;;
    *)      load_env_file; pass_through "$role" "$@" ;;
  esac
}

main "$@"
