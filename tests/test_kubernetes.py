"""The Kubernetes manifests (deploy/kubernetes): rendered by kubectl's own kustomize, the base and the OIDC variant
validate strictly against Kubernetes 1.30's schemas and keep what a platform team checks: labels and selectors, the
security context, probes, resources, secrets only from a Secret, the NetworkPolicy, and a grace period that covers
the proxy's drain. scripts/container-test plays the rendered Deployment with podman (tests/test_container.py).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tiktok_proxy.config import ConfigError, Settings, load_settings
from tiktok_proxy.oidc.jose import generate_pem
from tiktok_proxy.serving import drain_seconds

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "deploy" / "kubernetes"
VARIANTS = {"base": MANIFESTS / "base", "oidc": MANIFESTS / "overlays" / "oidc"}
KUBERNETES = "1.30.0"
SECRET_EXAMPLE = MANIFESTS / "base" / "secret.example.yaml"
# What every object and pod carries; the first two select the pods.
SELECTOR = {"app.kubernetes.io/name": "tiktok-proxy", "app.kubernetes.io/instance": "tiktok-proxy"}
LABELS = {**SELECTOR, "app.kubernetes.io/component": "token-proxy", "app.kubernetes.io/managed-by": "kustomize"}
# Variables whose values are secrets (or may carry one: HTTPS_PROXY's user:password), never literal in a manifest.
SECRET_VARIABLES = {"TIKTOK_CLIENT_SECRET", "PROXY_SECRET", "METRICS_TOKEN", "HTTPS_PROXY"}
IMAGE_ENVIRONMENT = {"HOST": "0.0.0.0", "PORT": "3333"}  # what the Dockerfile's ENV sets
SECRET = {"TIKTOK_CLIENT_KEY": "aw1clientkey", "TIKTOK_CLIENT_SECRET": "a-client-secret"}  # a Secret, filled in


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is not installed: scripts/setup-tests says where to get it (Debian's is too old)")
    return found


def render(directory: Path) -> list[dict[str, Any]]:
    rendered = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    return list(yaml.safe_load_all(rendered.stdout))


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """Each variant's objects, as `kubectl kustomize` renders them."""
    return render(VARIANTS[request.param])


@pytest.fixture
def settings(objects: list[dict[str, Any]], tmp_path: Path) -> Settings:
    """The proxy's settings in each variant's pod, with its Secret filled in."""
    return settings_in_pod(objects, tmp_path)


@pytest.fixture(scope="module")
def oidc_objects() -> list[dict[str, Any]]:
    return render(VARIANTS["oidc"])


def the(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [item for item in objects if item["kind"] == kind]
    return found


def pod_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return the(objects, "Deployment")["spec"]["template"]


def container_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = pod_of(objects)["spec"]["containers"]
    return container


def port_number(objects: list[dict[str, Any]], port: int | str) -> int:
    """A port as a number: a name resolves to the container's port of that name."""
    if isinstance(port, int):
        return port
    (number,) = [item["containerPort"] for item in container_of(objects)["ports"] if item["name"] == port]
    return number


def settings_in_pod(objects: list[dict[str, Any]], folder: Path, secret: dict[str, str] = SECRET) -> Settings:
    """The proxy's settings in the pod, read by its own loader: the image's environment, the Deployment's values,
    `secret` as its Secret. The OIDC keys' mount, if any, becomes `folder`, with a key in each file named."""
    env = dict(IMAGE_ENVIRONMENT)
    for variable in container_of(objects)["env"]:
        reference = variable.get("valueFrom", {}).get("secretKeyRef")
        if reference is None:
            env[variable["name"]] = variable["value"]
        elif reference["key"] in secret:
            env[variable["name"]] = secret[reference["key"]]
        else:
            assert reference.get("optional"), f"the pod cannot start without {reference['key']} in its Secret"
    pod = pod_of(objects)["spec"]
    secrets = {volume["name"] for volume in pod["volumes"] if "secret" in volume}
    for mount in container_of(objects)["volumeMounts"]:
        if mount["name"] in secrets:
            env = {name: value.replace(mount["mountPath"], str(folder)) for name, value in env.items()}
    for name in ("OIDC_SIGNING_KEY_FILE", "OIDC_NEXT_KEY_FILES", "OIDC_PREVIOUS_KEY_FILES"):
        for path in filter(None, env.get(name, "").split(",")):
            Path(path).write_text(generate_pem("ec"))
    return load_settings(env)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


# ---- rendering and the schemas


def test_the_objects_validate_strictly_against_kubernetes_1_30(objects: list[dict[str, Any]]) -> None:
    assert sorted(item["kind"] for item in objects) == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
    ]
    for item in objects:
        kubernetes_validate.validate(item, KUBERNETES, strict=True)
    kubernetes_validate.validate(yaml.safe_load(SECRET_EXAMPLE.read_text()), KUBERNETES, strict=True)


def test_strict_validation_refuses_a_misspelled_field(objects: list[dict[str, Any]]) -> None:
    # Guards the test above: a field Kubernetes does not know fails it.
    deployment = copy.deepcopy(the(objects, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"port": 3333}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


# ---- labels and selectors


def test_every_object_and_its_pods_carry_the_recommended_labels(objects: list[dict[str, Any]]) -> None:
    for item in [*objects, pod_of(objects)]:
        assert LABELS.items() <= item["metadata"]["labels"].items(), item["metadata"]


def test_the_selectors_and_the_autoscaler_find_the_deployments_pods(objects: list[dict[str, Any]]) -> None:
    deployment = the(objects, "Deployment")
    pod_labels = pod_of(objects)["metadata"]["labels"]
    selectors = {
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
        "Service": the(objects, "Service")["spec"]["selector"],
        "PodDisruptionBudget": the(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        "NetworkPolicy": the(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    }
    for constraint in pod_of(objects)["spec"]["topologySpreadConstraints"]:
        selectors[constraint["topologyKey"]] = constraint["labelSelector"]["matchLabels"]
    for owner, selector in selectors.items():
        assert selector == SELECTOR, owner  # nothing that changes (a version) in an immutable selector
        assert selects(selector, pod_labels), owner
    autoscaler = the(objects, "HorizontalPodAutoscaler")["spec"]
    assert autoscaler["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tiktok-proxy"}
    assert deployment["metadata"]["name"] == "tiktok-proxy"
    assert autoscaler["minReplicas"] >= 2 and autoscaler["maxReplicas"] > autoscaler["minReplicas"]
    assert "replicas" not in deployment["spec"], "the autoscaler owns the count: an apply must not reset it"
    assert the(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_the_service_routes_its_named_http_port_to_the_proxys_port(
    objects: list[dict[str, Any]], settings: Settings
) -> None:
    (port,) = the(objects, "Service")["spec"]["ports"]
    assert port["name"] == "http" and port["appProtocol"] == "http" and port["protocol"] == "TCP"
    assert port_number(objects, port["targetPort"]) == settings.port == 3333


def test_pods_spread_across_nodes(objects: list[dict[str, Any]]) -> None:
    spread = {item["topologyKey"]: item for item in pod_of(objects)["spec"]["topologySpreadConstraints"]}
    by_node = spread["kubernetes.io/hostname"]
    assert by_node["maxSkew"] == 1 and by_node["whenUnsatisfiable"] == "DoNotSchedule"
    assert by_node["matchLabelKeys"] == ["pod-template-hash"]  # each rollout's pods spread too


# ---- the pod


def test_the_security_context_meets_the_restricted_pod_security_standard(objects: list[dict[str, Any]]) -> None:
    pod = pod_of(objects)["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["runAsGroup"] == 10001  # the image's user
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    context = container_of(objects)["securityContext"]
    assert context == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # The one writable place: an emptyDir at /tmp, where several workers keep their metrics.
    mounts = {mount["mountPath"]: mount["name"] for mount in container_of(objects)["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_the_image_is_pinned_to_a_tag(objects: list[dict[str, Any]]) -> None:
    container = container_of(objects)
    name, _, tag = container["image"].rpartition(":")
    assert name.endswith("tiktok-proxy") and tag and tag != "latest" and "/" not in tag
    assert container["imagePullPolicy"] == "IfNotPresent"


def test_both_probes_ask_healthz_on_the_proxys_port(objects: list[dict[str, Any]], settings: Settings) -> None:
    container = container_of(objects)
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz", probe
        assert port_number(objects, get["port"]) == settings.port, probe


def test_resources_fit_one_worker_per_pod(objects: list[dict[str, Any]], settings: Settings) -> None:
    resources = container_of(objects)["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys() and "memory" in resources["limits"]
    cpu = resources["requests"]["cpu"]
    cores = int(cpu.removesuffix("m")) / 1000 if cpu.endswith("m") else float(cpu)
    # Each worker is one process on one CPU at most: a request above the workers' CPUs would be reserved for nothing.
    assert 0 < cores <= settings.workers == 1
    assert "cpu" not in resources["limits"]  # throttling would only stretch exchanges


def test_the_grace_period_covers_the_prestop_wait_and_the_drain(
    objects: list[dict[str, Any]], settings: Settings
) -> None:
    pod = pod_of(objects)["spec"]
    command = container_of(objects)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    assert pre_stop >= 5  # time for the endpoints' removal to reach the ingress and kube-proxy
    assert drain_seconds(settings) == 21  # REQUEST_TIMEOUT and TIKTOK_TIMEOUT as the manifest sets them
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain_seconds(settings)


def test_the_keep_alive_outlasts_the_usual_ingresses(settings: Settings) -> None:
    # ingress-nginx and AWS ALB keep idle connections to pods for 60 s: the proxy must not close them first.
    assert settings.keep_alive_timeout > 60


# ---- secrets


def test_secrets_come_only_from_the_secret_and_its_example_holds_none(objects: list[dict[str, Any]]) -> None:
    assert "Secret" not in [item["kind"] for item in objects], "an apply would overwrite the real Secret"
    env = container_of(objects)["env"]
    assert "envFrom" not in container_of(objects)
    references = {}
    for variable in env:
        if variable["name"] in SECRET_VARIABLES or "valueFrom" in variable:
            assert "value" not in variable, f"{variable['name']} is written in the manifest"
            references[variable["name"]] = variable["valueFrom"]["secretKeyRef"]
    assert {"TIKTOK_CLIENT_SECRET", "PROXY_SECRET", "METRICS_TOKEN"} <= references.keys()
    assert {reference["name"] for reference in references.values()} == {"tiktok-proxy"}
    # The gate: without the TikTok app's key and secret the pod does not start.
    assert not references["TIKTOK_CLIENT_KEY"].get("optional") and not references["TIKTOK_CLIENT_SECRET"].get(
        "optional"
    )
    example = yaml.safe_load(SECRET_EXAMPLE.read_text())
    assert example["metadata"]["name"] == "tiktok-proxy"
    assert example["stringData"].keys() == {reference["key"] for reference in references.values()}
    assert set(example["stringData"].values()) == {""}, "the example holds a value"
    assert "data" not in example


def test_the_gate_comes_from_the_secret(objects: list[dict[str, Any]], settings: Settings, tmp_path: Path) -> None:
    assert settings.host == "0.0.0.0"
    assert (settings.tiktok_client_key, settings.tiktok_client_secret) == tuple(SECRET.values())
    # The example Secret, applied as it is: the proxy refuses to start, with no gate on 0.0.0.0.
    with pytest.raises(ConfigError):
        settings_in_pod(objects, tmp_path, yaml.safe_load(SECRET_EXAMPLE.read_text())["stringData"])


# ---- the network


def test_the_network_policy_admits_the_proxys_port_and_lets_out_only_dns_and_https(
    objects: list[dict[str, Any]],
) -> None:
    policy = the(objects, "NetworkPolicy")["spec"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = policy["ingress"]
    assert [(port_number(objects, port["port"]), port["protocol"]) for port in ingress["ports"]] == [(3333, "TCP")]
    allowed = set()
    for rule in policy["egress"]:
        assert rule.get("ports"), "an egress rule without ports lets out every port"
        allowed |= {(port["port"], port["protocol"]) for port in rule["ports"]}
    assert allowed == {(53, "UDP"), (53, "TCP"), (443, "TCP")}


# ---- the OIDC variant


def test_the_oidc_variant_mounts_its_keys_read_only_from_a_secret(
    oidc_objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    pod = pod_of(oidc_objects)["spec"]
    (keys,) = [volume for volume in pod["volumes"] if volume["name"] == "oidc-keys"]
    assert keys["secret"]["secretName"] == "tiktok-proxy-oidc-keys"
    # Readable by the proxy's group (fsGroup), which owns the files, and by no one else.
    assert keys["secret"]["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == 10001
    (mount,) = [mount for mount in container_of(oidc_objects)["volumeMounts"] if mount["name"] == "oidc-keys"]
    assert mount["readOnly"] is True
    env = {variable["name"]: variable.get("value") for variable in container_of(oidc_objects)["env"]}
    inside = mount["mountPath"] + "/"
    assert env["OIDC_SIGNING_KEY_FILE"].startswith(inside)
    for name in ("OIDC_NEXT_KEY_FILES", "OIDC_PREVIOUS_KEY_FILES"):
        assert env[name] is not None, f"{name} is not set"
        assert all(path.startswith(inside) for path in filter(None, env[name].split(","))), name
    # The proxy starts with the facade on, from the key in the mount.
    settings = settings_in_pod(oidc_objects, tmp_path)
    assert settings.oidc_key is not None and settings.public_url.startswith("https://")


def test_the_oidc_variant_changes_only_the_deployment(oidc_objects: list[dict[str, Any]]) -> None:
    base = render(VARIANTS["base"])
    assert [item for item in oidc_objects if item["kind"] != "Deployment"] == [
        item for item in base if item["kind"] != "Deployment"
    ]
