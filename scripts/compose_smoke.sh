#!/usr/bin/env bash
# End-to-end container check on a REAL Docker engine + Compose v2 (CI and local):
#   engine -> PNGs -> `docker compose build api` -> `up -d --wait` -> health + POST /predict on real digit PNGs
#   -> in-container checks (non-root, no torch) -> `down -v`; prints the wall time of every phase.
#
#   bash scripts/compose_smoke.sh
#
# Environment:
#   LOCAL_DOCKER     engine helper (default ../shared/tools/local-docker.sh); skipped when DOCKER_HOST already
#                    answers. The engine keeps its state (images, BuildKit cache) between runs on a machine,
#                    so a second run rebuilds nothing.
#   PYTHON           interpreter with the repository's train deps, used to render the test PNGs
#                    (default .venv/bin/python, else python3)
#   SMOKE_PORT       host port to publish the API on (default 18000, loopback only; gRPC on SMOKE_PORT + 1)
#   SMOKE_PROJECT    compose project name (default rescom-smoke: never touches a user's `rescom` project/volumes)
#   SMOKE_MIN_CORRECT  of the 10 PNGs (the first test image of each class) how many must be labelled right (9)
#   SMOKE_KEEP=1     leave the stack running (no `down -v`) for inspection
#   RESCOM_BAKE_MODELS  model repository (inside the checkout) to bake into the image (default models)
set -euo pipefail
cd "$(dirname "$0")/.."

LOCAL_DOCKER=${LOCAL_DOCKER:-../shared/tools/local-docker.sh}
SMOKE_PORT=${SMOKE_PORT:-18000}
SMOKE_PROJECT=${SMOKE_PROJECT:-rescom-smoke}
SMOKE_MIN_CORRECT=${SMOKE_MIN_CORRECT:-9}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# shellcheck source=scripts/lib/compose_stack.sh
. scripts/lib/compose_stack.sh
STACK_NAME=compose_smoke
PHASE_WIDTH=8
STACK_KEEP=${SMOKE_KEEP:-0}
DOWN_TIMEOUT=30
FAIL_LOGS=(--tail 80 api)

WORK=$(mktemp -d)
COMPOSE=(docker compose -p "$SMOKE_PROJECT" -f compose.yaml)
# hermetic: the variables compose.yaml interpolates come from here, not from the caller's environment
unset RESCOM_API_KEY RESCOM_PROVIDERS RESCOM_DRAIN_TIMEOUT_S RESCOM_POLL_INTERVAL_S RESCOM_LOG_LEVEL
export RESCOM_BIND=127.0.0.1 RESCOM_HOST_PORT=$SMOKE_PORT RESCOM_GRPC_HOST_PORT=$((SMOKE_PORT + 1))
stack_init

# --- 1. engine
phase engine
stack_engine
docker compose version

# --- 2. test images: real digit PNGs of the test split, exactly as the model was evaluated on them
phase pngs
bake=${RESCOM_BAKE_MODELS:-models}
ls -d "$bake"/*/ >/dev/null 2>&1 || { echo "no model repository at $bake/: nothing to bake into the image" >&2; exit 1; }
"$PYTHON" scripts/digits_pngs.py --split test --out "$WORK/png" >/dev/null
# first image of each class (labels.csv: path,label,class_name)
awk -F, 'NR > 1 && !seen[$2]++ {print $1 "," $3}' "$WORK/png/labels.csv" >"$WORK/picked.csv"
echo "$(wc -l <"$WORK/picked.csv") PNGs (one per class) from the digits-LT test split"

# --- 3. build the serving image only (BuildKit; cache kept in the engine between runs)
phase build
"${COMPOSE[@]}" build api
docker image ls rescom-serve:local --format 'image {{.Repository}}:{{.Tag}} {{.Size}}'
# earlier builds of the tag are left dangling; drop them (their layers stay in the build cache)
docker image prune -f --filter label=org.opencontainers.image.title=rescom-serve >/dev/null

# --- 4. start and wait for the healthcheck (GET /health/ready: models loaded and warmed)
phase up
STACK_UP=1
"${COMPOSE[@]}" up -d --wait --pull never api
"${COMPOSE[@]}" ps

# --- 5. requests
phase predict
"$PYTHON" - "$SMOKE_PORT" "$WORK/png" "$WORK/picked.csv" "$SMOKE_MIN_CORRECT" <<'EOF'
import json, sys, time, urllib.request
port, root, picked, min_correct = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
base = f"http://127.0.0.1:{port}"
for path in ("/health/live", "/health/ready"):
    with urllib.request.urlopen(base + path, timeout=5) as r:
        assert r.status == 200, (path, r.status)
    print(f"GET {path} -> 200")
correct, total, first = 0, 0, None
for line in open(picked):
    rel, name = line.strip().split(",")
    body = open(f"{root}/{rel}", "rb").read()
    req = urllib.request.Request(base + "/predict", data=body, headers={"Content-Type": "image/png"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200, r.status
        resp = json.loads(r.read())
    ms = (time.perf_counter() - t) * 1e3
    pred = resp["predictions"][0]
    assert {"model", "version", "provider", "predictions"} <= resp.keys(), resp.keys()
    assert {"label", "class_id", "score", "top_k"} <= pred.keys(), pred.keys()
    ok = pred["label"] == name
    correct += ok
    total += 1
    if first is None:
        first = resp
        print(f"POST /predict ({rel}, {len(body)} bytes, image/png) -> 200 in {ms:.1f} ms:")
        print(json.dumps(resp)[:2000])
    print(f"  true {name}  predicted {pred['label']}  score {pred['score']:.3f}  {ms:6.1f} ms  {'ok' if ok else 'WRONG'}")
print(f"{correct}/{total} correct (need >= {min_correct}); model {first['model']} v{first['version']} on {first['provider']}")
sys.exit(0 if correct >= min_correct else 1)
EOF

# --- 6. what the image must be at run time: non-root, no torch, only the CPU onnxruntime
phase checks
uid=$("${COMPOSE[@]}" exec -T api id -u)
[ "$uid" != 0 ] || { echo "the API runs as root" >&2; exit 1; }
echo "api runs as uid $uid"
"${COMPOSE[@]}" exec -T api python /opt/rescom/verify_serve_image.py cpu
health=$(docker inspect --format '{{.State.Health.Status}}' "$("${COMPOSE[@]}" ps -q api)")
echo "docker health status: $health"
[ "$health" = healthy ]
