#!/usr/bin/env bash
# The compose demo, end to end, as one command: docker-compose.yml's Redis, Ray head and workers as
# containers, a short CartPole distillation run by the head service, and checks that it held.
#
#   deploy/compose-demo.sh                             2 workers
#   deploy/compose-demo.sh --workers 3 --kill-worker   3 workers; one holding actors is killed mid-run
#
# Steps: make a throwaway env file with random secrets if there is none; build the image if it is
# missing (deploy/build-image.sh --offline); bring up redis, then ray-head, then the workers, each
# once the one before answers its healthcheck; wait for the run to end; stop the stack, keeping the
# `runs` volume; then read the run back from that volume: summary.json reached the target, the
# checkpoints are there, every actor ran on a worker container (and with --kill-worker the head
# replaced what died). Exit 0 only if all of that held; on a failure, the last lines of each
# service's log. Uses `docker compose` where a Docker daemon answers, else podman-compose.
#
# Options: --workers N (default 2), --kill-worker, --build (run the offline build even when the image
# exists: seconds when nothing changed, so the demo runs the working tree's kd_system), --engine
# docker|podman, --project NAME (default kd-system), --env-file PATH (default .env), --timeout
# SECONDS for the run (default 1200).
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "compose-demo: error: $*" >&2; exit 2; }
step() { echo "compose-demo: [$(( SECONDS - started ))s] $*"; }
started=$SECONDS

workers=2 kill_worker=0 build=0 engine="" project=kd-system env_file=.env run_timeout=1200
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) [ $# -ge 2 ] || fail "--workers needs a number"; workers="$2"; shift ;;
    --workers=*) workers="${1#*=}" ;;
    --kill-worker) kill_worker=1 ;;
    --build) build=1 ;;
    --engine) [ $# -ge 2 ] || fail "--engine needs docker or podman"; engine="$2"; shift ;;
    --engine=*) engine="${1#*=}" ;;
    --project) [ $# -ge 2 ] || fail "--project needs a name"; project="$2"; shift ;;
    --project=*) project="${1#*=}" ;;
    --env-file) [ $# -ge 2 ] || fail "--env-file needs a path"; env_file="$2"; shift ;;
    --env-file=*) env_file="${1#*=}" ;;
    --timeout) [ $# -ge 2 ] || fail "--timeout needs seconds"; run_timeout="$2"; shift ;;
    --timeout=*) run_timeout="${1#*=}" ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown argument '$1': see deploy/compose-demo.sh --help" ;;
  esac
  shift
done
[[ "$workers" =~ ^[1-9][0-9]*$ ]] || fail "--workers must be a whole number of 1 or more, got '$workers'"
[ "$kill_worker" = 0 ] || [ "$workers" -ge 2 ] || fail "--kill-worker needs --workers 2 or more, so that one survives"
[[ "$run_timeout" =~ ^[1-9][0-9]*$ ]] || fail "--timeout must be a number of seconds, got '$run_timeout'"
[[ "$project" =~ ^[a-z0-9][a-z0-9_-]*$ ]] || fail "--project must be lower-case letters, digits, '_' or '-', got '$project'"

if [ -z "$engine" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then engine=docker
  elif command -v podman >/dev/null && command -v podman-compose >/dev/null; then engine=podman
  else fail "no container engine: neither a running Docker with 'docker compose' nor podman with podman-compose; on Debian run deploy/install-podman.sh"; fi
fi
case "$engine" in
  docker) compose=(docker compose) ;;
  podman) command -v podman-compose >/dev/null || fail "podman-compose is not installed: run deploy/install-podman.sh"
          compose=(podman-compose) ;;
  *) fail "--engine must be docker or podman, got '$engine'" ;;
esac
command -v "$engine" >/dev/null || fail "$engine is not installed: install it or pass --engine with the other one"

# ---- settings ----------------------------------------------------------------------------------
if [ ! -e "$env_file" ]; then
  # Secrets made here and kept only in this git-ignored file: the image never holds one.
  random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
  umask 077
  sed -e "s/^REDIS_PASSWORD=.*/REDIS_PASSWORD=$(random_hex 24)/" -e "s/^RAY_AUTH_TOKEN=.*/RAY_AUTH_TOKEN=$(random_hex 32)/" \
    .env.example >"$env_file"
  step "wrote $env_file with a random REDIS_PASSWORD and RAY_AUTH_TOKEN (it stays out of git and out of the image)"
fi
[ -r "$env_file" ] || fail "$env_file cannot be read: fix its permissions or pass --env-file"
grep -q '^REDIS_PASSWORD=..*' "$env_file" && grep -q '^RAY_AUTH_TOKEN=..*' "$env_file" ||
  fail "$env_file must set REDIS_PASSWORD and RAY_AUTH_TOKEN: fill them in as deploy/README.md says, or delete it to get random ones"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo "$1"; }
# These override the env file: the demo's own run, on host ports nothing else holds.
export KD_IMAGE="${KD_IMAGE:-kd-system}"
export KD_CONFIG=cartpole-v1 KD_NUM_ACTORS=auto KD_ACTOR_CPUS=1 KD_LEARNER_RESOURCE="" KD_LEARNER_DEVICE=cpu
export KD_RUN_NAME="compose-demo-$(date +%Y%m%d-%H%M%S)"
# A bound on the run's time, far above what reaching the target takes; 5 s snapshots give a
# learner lost with a killed worker a recent checkpoint to restart from.
export KD_RUN_ARGS="--set head.max_wall_s=$run_timeout --set head.snapshot_every_s=5"
# CartPole often reaches its target at the first evaluation; a run that is to lose a worker trains
# on for a while after it, so the kill lands mid-run and the head has to replace what died.
[ "$kill_worker" = 0 ] || KD_RUN_ARGS+=" --set head.evals_after_target=10"
export KD_DASHBOARD_HOST_PORT="$(free_port 8265)" KD_TENSORBOARD_HOST_PORT="$(free_port 6006)" KD_REDIS_HOST_PORT="$(free_port 6380)"
image="$KD_IMAGE:cpu"
volume="${project}_runs"
compose+=(-p "$project" -f docker-compose.yml --env-file "$env_file")

# ---- the stack ---------------------------------------------------------------------------------
containers() {  # the project's containers of service $1 (all services without one)
  local filters=(--filter "label=com.docker.compose.project=$project")
  [ -z "${1:-}" ] || filters+=(--filter "label=com.docker.compose.service=$1")
  "$engine" ps -a "${filters[@]}" --format '{{.Names}}' | sort
}
container_ip() { "$engine" inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$1" | awk '{print $1}'; }
in_image_python() {  # deploy/compose_check.py ARGS inside container $1 (with the entrypoint's settings)
  local where="$1"; shift
  "$engine" exec -i "$where" kd-entrypoint python - "$@" <deploy/compose_check.py
}
running() { [ "$("$engine" inspect --format '{{.State.Running}}' "$1" 2>/dev/null)" = true ]; }
compose_log=$(mktemp)
compose_quietly() {  # the compose tool's chatter (podman's complaints about systemd) only on failure
  "${compose[@]}" "$@" >>"$compose_log" 2>&1 || { tail -20 "$compose_log" >&2; return 1; }
}
stop_stack() {
  # podman-compose's down knows only the compose file's one worker, not those of --scale: stop and
  # remove every container of the project first, then let down remove the network (and pod).
  local names
  names=$(containers)
  # shellcheck disable=SC2086  # one name a word
  [ -z "$names" ] || { "$engine" stop -t 120 $names && "$engine" rm $names; } >>"$compose_log" 2>&1 || true
  compose_quietly down -t 120 && [ -z "$(containers)" ]
}

stack_up=0 ok=0
finish() {
  local status=$?
  if [ "$stack_up" = 1 ]; then
    if [ "$ok" != 1 ]; then
      for name in $(containers); do
        echo "----- last lines of $name -----"
        "$engine" logs --tail 40 "$name" 2>&1 | sed 's/^/  /'
      done
    fi
    step "stopping the stack; the volume $volume stays"
    stop_stack || echo "compose-demo: warning: the stack did not stop cleanly; see '$engine ps -a'" >&2
  fi
  rm -f "$compose_log"
  if [ "$status" = 0 ] && [ "$ok" = 1 ]; then step "PASS"; else echo "compose-demo: FAIL" >&2; fi
  exit "$status"
}
trap finish EXIT
trap 'exit 130' INT TERM
broke() { echo "compose-demo: $*" >&2; exit 1; }

wait_for() {  # SECONDS WHAT COMMAND...: until COMMAND succeeds, or fail naming WHAT
  local limit="$1" what="$2" deadline=$((SECONDS + $1)); shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || broke "gave up after ${limit} s waiting for $what"
    sleep 2
  done
}

if "$engine" image inspect "$image" >/dev/null 2>&1 && [ "$build" = 0 ]; then
  step "image $image is there (deploy/build-image.sh --offline, or --build here, brings it up to date)"
elif [ "$build" = 1 ]; then
  step "building $image with deploy/build-image.sh --offline (cached steps take seconds)"
  bash deploy/build-image.sh --offline --engine "$engine" --tag "$image"
else
  step "image $image is missing: building it with deploy/build-image.sh --offline"
  bash deploy/build-image.sh --offline --engine "$engine" --tag "$image"
fi

[ -z "$(containers)" ] || fail "the compose project '$project' has containers already: stop them with '${compose[*]} down', or pass --project"
step "engine: $engine; ${compose[*]}"
# Each service once the one before answers its healthcheck, here rather than by depends_on: podman
# before 4.6 ignores service_healthy and without systemd runs no healthchecks at all.
stack_up=1
step "starting redis"
compose_quietly up -d --no-build redis
redis_c=$(containers redis)
wait_for 120 "redis to answer (kd-entrypoint health redis)" "$engine" exec "$redis_c" kd-entrypoint health redis
step "starting ray-head; its head process starts run $KD_RUN_NAME once Ray is up"
compose_quietly up -d --no-build --no-deps ray-head
head_c=$(containers ray-head)
wait_for 300 "the Ray head to answer (kd-entrypoint health head)" "$engine" exec "$head_c" kd-entrypoint health head
step "starting $workers workers"
compose_quietly up -d --no-build --no-deps --scale "worker=$workers" worker
worker_count() { [ "$(in_image_python "$head_c" nodes | wc -l)" -ge "$workers" ]; }
wait_for 300 "$workers workers to join the Ray head" worker_count
declare -A node_container
worker_ids=""
while read -r node_id ip; do
  for name in $(containers worker); do
    [ "$(container_ip "$name")" != "$ip" ] || { node_container[$node_id]=$name; worker_ids+="$node_id,"; }
  done
done < <(in_image_python "$head_c" nodes)
for node_id in "${!node_container[@]}"; do step "  ${node_container[$node_id]} is Ray node ${node_id:0:8}"; done
[ "${#node_container[@]}" -ge "$workers" ] || broke "only ${#node_container[@]} of the Ray nodes offering kd_actor are this project's worker containers"

run_dir="/home/ray/runs/$KD_RUN_NAME"
if [ "$kill_worker" = 1 ]; then
  has_snapshot() { "$engine" exec "$head_c" sh -c "ls -d $run_dir/checkpoints/update-* >/dev/null 2>&1"; }
  run_over() { "$engine" logs "$head_c" 2>&1 | grep "the distillation exited with status" >/dev/null || ! running "$head_c"; }
  # Stop waiting as soon as the run is over too: a run that failed at start writes no checkpoint, and
  # its exit line says why sooner than 600 s of waiting would.
  snapshot_or_over() { has_snapshot || run_over; }
  wait_for 600 "the run's first checkpoint" snapshot_or_over
  has_snapshot || broke "the run ended before its first checkpoint: $("$engine" logs "$head_c" 2>&1 | grep 'the distillation exited' || echo "the ray-head container stopped")"
  victim=""
  for node_id in $(in_image_python "$head_c" collector-nodes); do victim=${node_container[$node_id]:-$victim}; done
  [ -n "$victim" ] || broke "no worker container holds a collector to kill"
  step "first checkpoint written; killing $victim ($engine kill), which holds collectors"
  "$engine" kill "$victim" >/dev/null
fi

step "waiting for run $KD_RUN_NAME to end (at most $run_timeout s)"
deadline=$((SECONDS + run_timeout + 300)) shown=""
until "$engine" logs "$head_c" 2>&1 | grep "the distillation exited with status" >/dev/null; do  # not -q: under pipefail an early exit would SIGPIPE the logs
  running "$head_c" || broke "the ray-head container stopped before the run ended"
  [ "$SECONDS" -lt "$deadline" ] || broke "the run did not end within $run_timeout s"
  line=$("$engine" logs --tail 30 "$head_c" 2>&1 | grep -E "^\[|updates|died|replacement" | tail -1 || true)
  [ -z "$line" ] || [ "$line" = "$shown" ] || { step "  ${line:0:160}"; shown=$line; }
  sleep 10
done
"$engine" logs "$head_c" 2>&1 | grep -E "died|replacement|placement:|auto:" | sed 's/^/  /' || true
"$engine" logs "$head_c" 2>&1 | grep "the distillation exited with status 0" >/dev/null ||
  broke "the distillation exited with an error: $("$engine" logs "$head_c" 2>&1 | grep 'the distillation exited')"

step "run ended; stopping the stack, keeping the volume $volume"
stack_up=0
stop_stack || broke "the stack did not stop cleanly: $(containers | tr '\n' ' ')left; see '$engine ps -a'"
"$engine" volume inspect "$volume" >/dev/null 2>&1 || broke "the volume $volume is gone after '${compose[*]} down'"
step "reading run $KD_RUN_NAME back from the volume $volume"
verify=(verify "$run_dir" "$worker_ids")
[ "$kill_worker" = 0 ] || verify+=(--killed)
if ! "$engine" run --rm -i --network none -v "$volume:/home/ray/runs:ro" "$image" python - "${verify[@]}" \
    <deploy/compose_check.py | sed 's/^/  /'; then
  broke "the run on the volume is not what the demo expects (see above)"
fi
ok=1
step "summary.json and checkpoints are on $volume, actors ran on the worker containers$([ "$kill_worker" = 0 ] || echo ", and the run outlived $victim")"
