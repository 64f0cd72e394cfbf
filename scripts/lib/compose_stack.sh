# shellcheck shell=bash
# Shared by scripts/compose_smoke.sh and scripts/compose_scale_smoke.sh (sourced, never run): phase timing, the
# Docker engine, and the exit trap that prints the failing stack's logs, takes the stack down and reports the
# wall time of every phase.
#
# The caller sets, before calling stack_init:
#   STACK_NAME     the script's name in messages (e.g. compose_smoke)
#   COMPOSE        array: the `docker compose -p PROJECT -f FILE` command of the stack
#   WORK           scratch folder, removed at exit
# (all of them before stack_init, which installs the exit trap that reads them)
#   STACK_KEEP     1: leave the stack running at exit (no `down -v`), for inspection
#   DOWN_TIMEOUT   seconds `docker compose down` gives the containers to stop
#   FAIL_LOGS      array: what `docker compose logs --no-color` shows when the run fails (e.g. --tail 80 api)
#   PHASE_WIDTH    column width of the phase names in the wall-time table
#   LOCAL_DOCKER   engine helper for stack_engine (used when DOCKER_HOST does not answer)
# and sets STACK_UP=1 once `docker compose up` has been called.

now() { echo "${EPOCHREALTIME:-$(date +%s.%N)}"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%6.1f", b - a}'; }

phase() {  # phase NAME: close the previous phase, open NAME
  local t; t=$(now)
  if [ -n "${PHASE:-}" ]; then TIMES+=("$(printf "%-${PHASE_WIDTH}s" "$PHASE") $(elapsed "$phase_start" "$t") s"); fi
  PHASE=$1; phase_start=$t
  [ "$1" = end ] || echo "=== $STACK_NAME: $1"
}

stack_cleanup() {  # the EXIT trap: logs on failure, `down -v` unless STACK_KEEP=1, the wall times, the verdict
  local rc=$?
  trap - EXIT INT TERM
  if [ $rc -ne 0 ] && [ "$STACK_UP" = 1 ]; then
    echo "=== $STACK_NAME: FAILED (rc=$rc); logs:"
    "${COMPOSE[@]}" ps -a || true
    "${COMPOSE[@]}" logs --no-color "${FAIL_LOGS[@]}" || true
  fi
  if [ "$STACK_UP" = 1 ] && [ "${STACK_KEEP:-0}" != 1 ]; then
    phase down
    "${COMPOSE[@]}" down -v --remove-orphans --timeout "$DOWN_TIMEOUT" || rc=1
  fi
  phase end
  rm -rf "${WORK:-}"
  echo "=== $STACK_NAME: wall times"
  printf '  %s\n' "${TIMES[@]}"
  echo "  $(printf "%-${PHASE_WIDTH}s" total) $(elapsed "$T0" "$(now)") s"
  if [ $rc -eq 0 ]; then echo "$STACK_NAME: PASSED"; else echo "$STACK_NAME: FAILED"; fi
  exit $rc
}

stack_init() {  # start the clock and install the traps (call once, early)
  T0=$(now)
  phase_start=$T0
  TIMES=()
  STACK_UP=0
  trap stack_cleanup EXIT
  trap 'exit 130' INT TERM
}

stack_engine() {  # the engine at DOCKER_HOST when it answers, else one started with LOCAL_DOCKER
  if [ -n "${DOCKER_HOST:-}" ] && docker version >/dev/null 2>&1; then
    echo "using the engine at $DOCKER_HOST"
  else
    local engine_env
    engine_env=$("$LOCAL_DOCKER" start) || { echo "could not start a Docker engine with $LOCAL_DOCKER" >&2; exit 1; }
    eval "$engine_env"
  fi
  docker version --format 'engine {{.Server.Version}} (API {{.Server.APIVersion}})'
}
