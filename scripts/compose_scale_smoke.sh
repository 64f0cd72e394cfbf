#!/usr/bin/env bash
# Scale-out check on a REAL Docker engine + Compose v2 (CI and local): compose.scale.yaml = HAProxy + api replicas.
#   engine -> PNGs -> build api + lb -> `up --wait --scale api=1` -> reference answers of ONE replica
#   -> `up --wait --scale api=3` -> 32 clients for 60 s through the balancer; during it one replica is killed
#   (`docker kill`, SIGKILL) and another stopped gracefully (`docker stop`, SIGTERM) -> every request must get a
#   200 whose answer equals the single replica's -> `down -v`; prints counts, latencies and the wall time of
#   every phase.
#
#   bash scripts/compose_scale_smoke.sh
#
# Environment (same conventions as scripts/compose_smoke.sh):
#   LOCAL_DOCKER      engine helper (default ../shared/tools/local-docker.sh); skipped when DOCKER_HOST answers
#   PYTHON            interpreter with the repository's train deps, to render the PNGs (default .venv/bin/python)
#   SCALE_PORT        host port of the balancer (default 18010; its stats page on SCALE_PORT+1), loopback only
#   SCALE_PROJECT     compose project name (default rescom-scale-smoke)
#   SCALE_REPLICAS    replicas during the load (default 3; at least 3: one is killed, one stopped)
#   SCALE_CLIENTS     concurrent clients (default 32)
#   SCALE_DURATION    seconds of load (default 60); the kill happens at 25 %, the graceful stop at 50 %
#   SCALE_KEEP=1      leave the stack running (no `down -v`) for inspection
set -euo pipefail
cd "$(dirname "$0")/.."

LOCAL_DOCKER=${LOCAL_DOCKER:-../shared/tools/local-docker.sh}
SCALE_PORT=${SCALE_PORT:-18010}
SCALE_PROJECT=${SCALE_PROJECT:-rescom-scale-smoke}
SCALE_REPLICAS=${SCALE_REPLICAS:-3}
SCALE_CLIENTS=${SCALE_CLIENTS:-32}
SCALE_DURATION=${SCALE_DURATION:-60}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
[ "$SCALE_REPLICAS" -ge 3 ] || { echo "SCALE_REPLICAS must be >= 3 (one is killed, one stopped), got $SCALE_REPLICAS" >&2; exit 2; }

# shellcheck source=scripts/lib/compose_stack.sh
. scripts/lib/compose_stack.sh
STACK_NAME=compose_scale_smoke
PHASE_WIDTH=9
STACK_KEEP=${SCALE_KEEP:-0}
DOWN_TIMEOUT=40
FAIL_LOGS=(--tail 40)

WORK=$(mktemp -d)
COMPOSE=(docker compose -p "$SCALE_PROJECT" -f compose.scale.yaml)
# hermetic: the variables the compose files interpolate come from here, not from the caller's environment
unset RESCOM_API_KEY RESCOM_PROVIDERS RESCOM_DRAIN_TIMEOUT_S RESCOM_POLL_INTERVAL_S RESCOM_LOG_LEVEL \
  RESCOM_SHUTDOWN_DELAY_S RESCOM_LB_SLOTS RESCOM_INSTANCES RESCOM_INTRA_OP_THREADS
export RESCOM_BIND=127.0.0.1 RESCOM_HOST_PORT=$SCALE_PORT RESCOM_LB_STATS_PORT=$((SCALE_PORT + 1))
URL=http://127.0.0.1:$SCALE_PORT
STATS=http://127.0.0.1:$((SCALE_PORT + 1))/stats
stack_init

servers_up() {  # number of `api` servers the balancer has UP
  "$PYTHON" -c "import sys, urllib.request as u; rows = u.urlopen(sys.argv[1] + ';csv', timeout=5).read().decode().splitlines(); \
print(sum(1 for r in rows if r.startswith('api,api') and r.split(',')[17].startswith('UP')))" "$STATS"
}
wait_servers_up() {  # wait_servers_up N: until the balancer has N replicas in rotation (60 s at most)
  local n=0
  for _ in $(seq 120); do n=$(servers_up); [ "$n" = "$1" ] && { echo "balancer: $n replicas UP"; return 0; }; sleep 0.5; done
  echo "balancer: $n replicas UP after 60 s, expected $1" >&2; return 1
}

# --- 1. engine
phase engine
stack_engine

# --- 2. real digit PNGs of the test split
phase pngs
"$PYTHON" scripts/digits_pngs.py --split test --out "$WORK/png" >/dev/null
echo "$(($(wc -l <"$WORK/png/labels.csv") - 1)) PNGs from the digits-LT test split"

# --- 3. build the API and the balancer (BuildKit cache kept in the engine between runs)
phase build
"${COMPOSE[@]}" build api lb
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^rescom-(serve|lb):local '
docker image prune -f --filter label=org.opencontainers.image.title=rescom-serve >/dev/null
docker image prune -f --filter label=org.opencontainers.image.title=rescom-lb >/dev/null

# --- 4. one replica: the reference answers
phase single
STACK_UP=1
"${COMPOSE[@]}" up -d --wait --pull never --scale api=1
wait_servers_up 1
"$PYTHON" scripts/scale_load.py reference --url "$URL" --pngs "$WORK/png" --out "$WORK/reference.json"

# --- 5. scale out: the balancer finds the new replicas through DNS, no reload
phase scale
"${COMPOSE[@]}" up -d --wait --pull never --scale api="$SCALE_REPLICAS"
wait_servers_up "$SCALE_REPLICAS"
mapfile -t REPLICAS < <("${COMPOSE[@]}" ps -q api)
"${COMPOSE[@]}" ps

# --- 6. load with faults: SIGKILL one replica at 25 % of the run, SIGTERM another at 50 %
phase load
kill_at=$(awk -v d="$SCALE_DURATION" 'BEGIN {printf "%.1f", d / 4}')
stop_at=$(awk -v d="$SCALE_DURATION" 'BEGIN {printf "%.1f", d / 2}')
echo "killing ${REPLICAS[0]:0:12} at ${kill_at} s, stopping ${REPLICAS[1]:0:12} gracefully at ${stop_at} s"
"$PYTHON" scripts/scale_load.py load --url "$URL" --pngs "$WORK/png" --reference "$WORK/reference.json" \
  --clients "$SCALE_CLIENTS" --duration "$SCALE_DURATION" --stats-url "$STATS" \
  --event "${kill_at}=docker kill ${REPLICAS[0]}" \
  --event "${stop_at}=docker stop -t 40 ${REPLICAS[1]}"

# --- 7. what became of the two replicas
phase after
for id in "${REPLICAS[0]}" "${REPLICAS[1]}"; do
  docker inspect --format '{{.Name}}: {{.State.Status}}, exit code {{.State.ExitCode}}, restarts {{.RestartCount}}' "$id"
done
stopped_exit=$(docker inspect --format '{{.State.ExitCode}}' "${REPLICAS[1]}")
# The service exits by itself after its drain (0, or 143 where the re-raised SIGTERM is not ignored as it is for
# PID 1); 137 would mean Docker had to SIGKILL it because the drain outlasted stop_grace_period.
case "$stopped_exit" in 0|143) ;; *) echo "the gracefully stopped replica exited $stopped_exit (expected 0 or 143)" >&2; exit 1 ;; esac
echo "balancer now has $(servers_up) replicas UP"
