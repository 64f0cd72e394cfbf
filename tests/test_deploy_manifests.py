"""deploy/: every kustomization renders (kubectl kustomize) and validates offline; a broken field is caught; probes,
ports, env names and shutdown timings of the manifests, compose.scale.yaml and the HAProxy config agree with the
service's real settings (service.config.Settings) and route table, so they cannot drift.

kubectl is needed for rendering: the tests skip without it, unless RESCOM_REQUIRE_KUBECTL=1 (CI sets it).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import Settings
from service.main import create_app
from service.metrics import ServiceMetrics

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "kubernetes"
EXPECTED_KINDS = {
    "base": {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"},
    "models-pvc": {"PersistentVolumeClaim"},
    "overlays/custom-metrics": {"Deployment", "HorizontalPodAutoscaler"},
    "overlays/gpu": {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    },
    "overlays/kserve": {"InferenceService"},
    "overlays/shared-models": {"Deployment", "PersistentVolumeClaim"},
    "overlays/training": {"PyTorchJob", "Job", "Service", "PersistentVolumeClaim"},
}
API_OVERLAYS = ("base", "overlays/custom-metrics", "overlays/gpu", "overlays/shared-models")


def _load_validator() -> Any:
    spec = importlib.util.spec_from_file_location("validate_k8s", REPO / "scripts" / "validate_k8s.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


validate_k8s = _load_validator()


@pytest.fixture(scope="module")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        if os.environ.get("RESCOM_REQUIRE_KUBECTL") == "1":
            pytest.fail("kubectl not found, and RESCOM_REQUIRE_KUBECTL=1 (apt-get install kubernetes-client)")
        pytest.skip("kubectl not installed (apt-get install kubernetes-client)")
    return path


@pytest.fixture(scope="module")
def rendered(kubectl: str) -> dict[str, list[dict[str, Any]]]:
    """Every kustomization under deploy/kubernetes, rendered: {relative folder: objects}."""
    return {
        str(folder.relative_to(K8S)): validate_k8s.render(folder, kubectl)
        for folder in validate_k8s.kustomizations(K8S)
    }


@pytest.fixture(scope="module")
def route_paths() -> set[str]:
    """The service's real route table (every route of its OpenAPI schema)."""
    app = create_app(Settings(model_repository=REPO / "models"))
    return set(app.openapi()["paths"])


def _one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (obj,) = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    return obj


def _settings_of(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the container would build them from its env (every RESCOM_* name must be a real field)."""
    for name in [n for n in os.environ if n.startswith("RESCOM_")]:
        monkeypatch.delenv(name)
    values = {}
    for env in container.get("env", []):
        name = env["name"]
        if not name.startswith("RESCOM_"):
            continue
        field = name.removeprefix("RESCOM_").lower()
        assert field in Settings.model_fields, (
            f"{container['name']}: env {name} is no setting of service.config"
        )
        if "value" in env:
            values[field] = env["value"]
    values["model_repository"] = REPO / "models"  # the path inside the image; any existing folder here
    return Settings(**values)


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return number


def _prestop_sleep_s(container: dict[str, Any]) -> float:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    return float(command[1]) if command[:1] == ["sleep"] else 0.0


def _check_api_container(
    where: str, pod: dict[str, Any], container: dict[str, Any], routes: set[str], mp: pytest.MonkeyPatch
) -> None:
    settings = _settings_of(container, mp)
    ports = [p["containerPort"] for p in container["ports"]]
    assert ports == [settings.port], f"{where}: container ports {ports} != RESCOM_PORT {settings.port}"
    assert settings.host == "0.0.0.0", f"{where}: the service must listen on all interfaces in a pod"
    probes = {k: container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in container}
    assert {"readinessProbe", "livenessProbe"} <= probes.keys(), where
    for kind, probe in probes.items():
        path = probe["httpGet"]["path"]
        assert path in routes, f"{where}: {kind} path {path} is not a route of the service"
        assert _port_number(container, probe["httpGet"]["port"]) == settings.port, f"{where}: {kind} port"
    assert probes["readinessProbe"]["httpGet"]["path"].endswith("/health/ready"), where
    assert probes["livenessProbe"]["httpGet"]["path"].endswith("/health/live"), where
    grace = pod.get("terminationGracePeriodSeconds", 30)  # Kubernetes' default
    delay = _prestop_sleep_s(container) + settings.shutdown_delay_s
    assert delay >= 1, (
        f"{where}: no preStop sleep and no RESCOM_SHUTDOWN_DELAY_S: endpoints would lag the exit"
    )
    needed = delay + settings.drain_timeout_s + 1
    assert grace >= needed, (
        f"{where}: terminationGracePeriodSeconds {grace} < preStop + delay + drain + 1 = {needed}"
    )
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False, where
    run_as_non_root = security.get("runAsNonRoot", pod.get("securityContext", {}).get("runAsNonRoot"))
    assert run_as_non_root is True, where
    assert {"/tmp"} <= {m["mountPath"] for m in container["volumeMounts"]}, f"{where}: /tmp must be writable"


def test_every_kustomization_renders_and_validates(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert set(rendered) == set(EXPECTED_KINDS), "a kustomization was added or removed: update EXPECTED_KINDS"
    for rel, objects in rendered.items():
        errors = [e for obj in objects for e in validate_k8s.validate(obj)]
        assert errors == [], f"{rel}:\n" + "\n".join(errors)
        assert EXPECTED_KINDS[rel] <= {o["kind"] for o in objects}, rel
        assert all(o["metadata"].get("namespace") == "rescom" for o in objects), rel


BREAKAGES = [  # (file, text, replacement, the error that must be reported)
    ("base/deployment.yaml", "readinessProbe:", "readinessProbes:", "readinessProbes: unknown field"),
    ("base/deployment.yaml", "containerPort: 8000", 'containerPort: "8000"', "containerPort: expected int"),
    ("base/deployment.yaml", "- name: api\n", "- nme: api\n", "containers[0].name: required field missing"),
    ("base/hpa.yaml", "minReplicas: 2", "minReplicas: two", "minReplicas: expected int"),
    ("overlays/kserve/inferenceservice-rescom.yaml", "scaleTarget: 32", "scaleTargett: 32", "unknown field"),
    (
        "overlays/kserve/inferenceservice-triton.yaml",
        "modelFormat:\n        name: triton",
        "modelFormat:\n        nam: triton",
        "modelFormat.nam: unknown field",
    ),
    (
        "overlays/training/pytorchjob.yaml",
        'nprocPerNode: "1"',
        "nprocPerNode: [1]",
        "nprocPerNode: expected str",
    ),
]


@pytest.mark.parametrize(("rel", "text", "broken", "error"), BREAKAGES, ids=[b[3] for b in BREAKAGES])
def test_a_broken_field_in_a_copy_is_caught(
    tmp_path: Path, kubectl: str, rel: str, text: str, broken: str, error: str
) -> None:
    copy = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy)
    target = copy / rel
    source = target.read_text()
    assert text in source, f"{rel} no longer contains {text!r}: update the test"
    target.write_text(source.replace(text, broken, 1))
    folder = copy / rel.split("/")[0] if rel.startswith("base/") else copy / "/".join(rel.split("/")[:2])
    errors = [e for obj in validate_k8s.render(folder, kubectl) for e in validate_k8s.validate(obj)]
    assert any(error in e for e in errors), f"{error!r} not reported; got {errors}"


def test_api_manifests_match_the_service_settings(
    rendered: dict[str, list[dict[str, Any]]], route_paths: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for rel in API_OVERLAYS:
        deployment = _one(rendered[rel], "Deployment", "rescom-api")
        pod = deployment["spec"]["template"]["spec"]
        (api,) = [c for c in pod["containers"] if c["name"] == "api"]
        _check_api_container(rel, pod, api, route_paths, monkeypatch)
        settings = _settings_of(api, monkeypatch)
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert (
            int(annotations["prometheus.io/port"]) == settings.port
            and annotations["prometheus.io/path"] in route_paths
        )
        service = _one(rendered[rel], "Service", "rescom-api")
        assert [p["targetPort"] for p in service["spec"]["ports"]] == [p["name"] for p in api["ports"]], rel
        hpa = _one(rendered[rel], "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"], rel
        mounts = {m["mountPath"]: m for m in api["volumeMounts"]}
        assert mounts[str(Path("/models"))]["readOnly"] is True and os.fspath(settings.model_repository) != ""
    kserve = _one(rendered["overlays/kserve"], "InferenceService", "rescom")
    predictor = kserve["spec"]["predictor"]
    _check_api_container("kserve", predictor, predictor["containers"][0], route_paths, monkeypatch)


def test_gpu_overlay_asks_for_a_gpu_and_the_cuda_provider(
    rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    pod = _one(rendered["overlays/gpu"], "Deployment")["spec"]["template"]["spec"]
    (api,) = pod["containers"]
    assert api["resources"]["limits"]["nvidia.com/gpu"] == "1" and api["image"].endswith(":local-gpu")
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]) and pod["nodeSelector"]
    assert _settings_of(api, monkeypatch).providers == "cuda"


def test_custom_metrics_exist_in_the_service(
    rendered: dict[str, list[dict[str, Any]]], route_paths: set[str]
) -> None:
    hpa = _one(rendered["overlays/custom-metrics"], "HorizontalPodAutoscaler")
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    rules = yaml.safe_load((K8S / "overlays/custom-metrics/prometheus-adapter-rules.yaml").read_text())
    custom = rules["rules"]["custom"]
    assert wanted == {r["name"]["as"] for r in custom}, "every HPA metric needs an adapter rule"
    families = {m.name for m in ServiceMetrics().registry.collect()}
    for rule in custom:
        series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)  # type: ignore[union-attr]
        assert re.sub(r"_bucket$", "", series) in families, f"{series} is not exported by service.metrics"
        for route in re.findall(r'route="([^"]+)"', rule["seriesQuery"] + rule["metricsQuery"]):
            assert route in route_paths, route


def test_training_jobs_run_the_same_command(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["overlays/training"]
    job = _one(objects, "Job")
    (indexed,) = job["spec"]["template"]["spec"]["containers"]
    specs = _one(objects, "PyTorchJob")["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master", "Worker"}
    plain = {k: v for k, v in indexed.items() if k != "env"}
    own_env = [e for e in indexed["env"] if not e["name"].startswith("PET_")]
    for role, spec in specs.items():
        (container,) = spec["template"]["spec"]["containers"]
        assert container["name"] == "pytorch", (
            f"{role}: the training operator needs the container named pytorch"
        )
        assert {k: v for k, v in container.items() if k != "env"} == plain, role
        assert container["env"] == own_env, role
    env = {e["name"]: e.get("value") for e in indexed["env"]}
    assert (REPO / env["TRAIN_CONFIG"]).is_file()
    script = indexed["args"][0]
    for path in re.findall(r"\b(\w+/\w+\.py)\b", script):
        assert (REPO / path).is_file(), path
    nodes = int(env["PET_NNODES"])
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == nodes
    assert sum(s["replicas"] for s in specs.values()) == nodes
    master = env["PET_MASTER_ADDR"]
    service = job["spec"]["template"]["spec"]["subdomain"]
    assert master == f"{job['metadata']['name']}-0.{service}", "rendezvous must be pod 0 of the indexed job"
    headless = _one(objects, "Service", service)
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["port"] for p in headless["spec"]["ports"]] == [int(env["PET_MASTER_PORT"])]
    assert [p["containerPort"] for p in indexed["ports"]] == [int(env["PET_MASTER_PORT"])]


class _ComposeLoader(yaml.SafeLoader):
    """YAML loader that also reads Compose's ``!reset`` / ``!override`` merge tags (as plain values)."""


for _tag in ("!reset", "!override"):
    _ComposeLoader.add_constructor(
        _tag,
        lambda loader, node: (
            loader.construct_sequence(node)
            if isinstance(node, yaml.SequenceNode)
            else loader.construct_mapping(node)
            if isinstance(node, yaml.MappingNode)
            else loader.construct_scalar(node)
        ),
    )


def _compose(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)  # noqa: S506 - SafeLoader subclass


def _seconds(value: str) -> float:
    """HAProxy time ``500ms`` / ``1s`` -> seconds."""
    return float(value[:-2]) / 1000 if value.endswith("ms") else float(value.removesuffix("s"))


def _compose_default(value: str) -> str:
    """``${VAR:-default}`` -> default (what compose uses when VAR is unset)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_compose_scale_and_haproxy_match_the_service(
    route_paths: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _compose(REPO / "compose.yaml")["services"]["api"]
    scale = _compose(REPO / "compose.scale.yaml")["services"]
    assert (
        scale["api"]["extends"] == {"file": "compose.yaml", "service": "api"} and scale["api"]["ports"] == []
    )
    env = {
        k: _compose_default(str(v)) for k, v in (base["environment"] | scale["api"]["environment"]).items()
    }
    container = {"name": "compose api", "env": [{"name": k, "value": v} for k, v in env.items() if v != ""]}
    settings = _settings_of(container, monkeypatch)
    grace = float(scale["api"]["stop_grace_period"].removesuffix("s"))
    assert grace > settings.shutdown_delay_s + settings.drain_timeout_s, "docker would SIGKILL a drain"
    cfg = (REPO / "docker" / "haproxy.cfg").read_text()
    check_path = re.search(r"option httpchk GET (\S+)", cfg).group(1)  # type: ignore[union-attr]
    assert check_path in route_paths and check_path.endswith("/health/ready")
    server = re.search(r"default-server (.*)", cfg).group(1).split()  # type: ignore[union-attr]
    inter, fastinter, fall = (server[server.index(k) + 1] for k in ("inter", "fastinter", "fall"))
    detect_s = _seconds(inter) + (int(fall) - 1) * _seconds(fastinter)
    assert settings.shutdown_delay_s > detect_s + 1, (
        "a stopping replica must be out of rotation before it closes"
    )
    dockerfile = (REPO / "docker" / "lb.Dockerfile").read_text()
    port = int(re.search(r"RESCOM_LB_BACKEND_PORT=(\d+)", dockerfile).group(1))  # type: ignore[union-attr]
    assert port == 8000 and "RESCOM_PORT=8000" in (REPO / "docker" / "service.Dockerfile").read_text()
