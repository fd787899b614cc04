"""deploy/: the kustomize base renders, and every object is valid, offline.

No kustomize binary or cluster is needed: the base is rendered here with the
subset of kustomize it uses (resources, labels, images, JSON 6902 patches),
then built-in kinds (CRDs included) are validated with ``kubernetes-validate``
against the schemas of a current Kubernetes release, and custom resources
against the project's own CRD schemas. A patch whose path no longer exists,
a dangling ServiceAccount or namespace, or an image mismatch between the
operator and the agent fails here rather than at ``kubectl apply -k``.
"""

from __future__ import annotations

import copy
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from multinic_sim.patching import json_patch

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
KUBERNETES_VERSION = kubernetes_validate.latest_version()


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _matches(obj: dict[str, Any], target: dict[str, str]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    wanted = {
        "group": group,
        "version": version,
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
    }
    return all(wanted[key] == value for key, value in target.items() if key in wanted)


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    """What ``kustomize build`` gives for the features deploy/ uses (fails on others)."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert spec["kind"] == "Kustomization"
    unsupported = set(spec) - {"apiVersion", "kind", "resources", "labels", "images", "patches"}
    assert not unsupported, f"extend this renderer for {unsupported}"
    objects: list[dict[str, Any]] = []
    for resource in spec["resources"]:
        objects += _documents(directory / resource)
    for label in spec.get("labels", []):
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
    for image in spec.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                name = re.split(r"[:@]", container["image"].rsplit("/", 1)[-1])[0]
                repository = container["image"][: container["image"].rfind(name) + len(name)]
                if repository == image["name"]:
                    container["image"] = f"{image.get('newName', repository)}:{image['newTag']}"
    for patch in spec.get("patches", []):
        targets = [i for i, obj in enumerate(objects) if _matches(obj, patch["target"])]
        assert len(targets) == 1, f"patch target {patch['target']} matches {len(targets)} objects"
        objects[targets[0]] = json_patch(objects[targets[0]], yaml.safe_load(patch["patch"]))
    return objects


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render_kustomization(DEPLOY)


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} objects"
    return found[0]


def test_the_base_has_crds_rbac_operator_and_default_config(rendered: list[dict[str, Any]]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in rendered}
    crds = {name for kind, name in kinds if kind == "CustomResourceDefinition"}
    assert crds == {
        f"{plural}.multinic.fms.io"
        for plural in ("cidrs", "configs", "deviceclasses", "hostinterfaces", "ippools",
                       "multinicnetworks")
    }  # fmt: skip
    for expected in [
        ("Namespace", "multinic-system"),
        ("Deployment", "multinic-operator"),
        ("ServiceAccount", "multinic-operator"),
        ("ServiceAccount", "multinic-agent"),
        ("ClusterRole", "multinic-operator"),
        ("ClusterRole", "multinic-agent"),
        ("Config", "multi-nicd"),
    ]:
        assert expected in kinds
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "multinic" for o in rendered)


def assert_builtin_objects_valid(objects: list[dict[str, Any]]) -> None:
    """Every built-in (non-multinic) object is valid for a current Kubernetes; 12 or more."""
    checked = 0
    for obj in objects:
        if obj["apiVersion"].startswith("multinic.fms.io/"):
            continue
        try:
            kubernetes_validate.validate(copy.deepcopy(obj), KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {e.message} at {e.path}")
        checked += 1
    assert checked >= 12


def test_builtin_objects_are_valid_for_a_current_kubernetes(rendered: list[dict[str, Any]]) -> None:
    assert_builtin_objects_valid(rendered)


def test_custom_resources_match_their_crds(rendered: list[dict[str, Any]]) -> None:
    schemas = {
        (crd["spec"]["group"], crd["spec"]["names"]["kind"]): crd["spec"]["versions"][0]["schema"][
            "openAPIV3Schema"
        ]
        for crd in rendered
        if crd["kind"] == "CustomResourceDefinition"
    }
    samples = sorted((DEPLOY / "operator" / "networks").glob("*.yaml"))
    custom = [o for o in rendered if o["apiVersion"].startswith("multinic.fms.io/")]
    custom += [d for path in samples for d in _documents(path)]
    assert any(o["kind"] == "MultiNicNetwork" for o in custom)
    for obj in custom:
        schema = schemas[("multinic.fms.io", obj["kind"])]
        try:
            jsonschema.validate(obj, schema)
        except jsonschema.ValidationError as e:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {e.message}")


def test_references_resolve_and_one_image_runs_operator_and_agent(
    rendered: list[dict[str, Any]],
) -> None:
    namespaces = {o["metadata"]["name"] for o in rendered if o["kind"] == "Namespace"}
    accounts = {
        (o["metadata"]["namespace"], o["metadata"]["name"])
        for o in rendered
        if o["kind"] == "ServiceAccount"
    }
    for obj in rendered:
        namespace = obj["metadata"].get("namespace")
        assert namespace is None or namespace in namespaces, obj["metadata"]
        for subject in obj.get("subjects", []):
            assert (subject["namespace"], subject["name"]) in accounts
        if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            _one(rendered, obj["roleRef"]["kind"], obj["roleRef"]["name"])

    deployment = _one(rendered, "Deployment", "multinic-operator")
    pod = deployment["spec"]["template"]["spec"]
    assert (deployment["metadata"]["namespace"], pod["serviceAccountName"]) in accounts
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    config = _one(rendered, "Config", "multi-nicd")
    assert container["image"] == env["MULTINIC_AGENT_IMAGE"] == config["spec"]["daemon"]["image"]
    # runAsNonRoot needs a numeric user: the shared image runs as root for the agent.
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] > 0


def test_the_dockerfile_copies_what_exists_and_installs_the_commands_the_manifests_run(
    rendered: list[dict[str, Any]],
) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    copied = re.findall(r"^COPY (?!--from)(\S+) ", dockerfile, flags=re.MULTILINE)
    assert copied
    for source in copied:
        assert (REPO / source).exists(), f"Dockerfile copies {source}, which does not exist"
    scripts: set[str] = set()
    for source in copied:
        project = tomllib.loads((REPO / source / "pyproject.toml").read_text())["project"]
        assert project["name"] in dockerfile.split("FROM")[-1], f"{project['name']} not installed"
        scripts |= set(project.get("scripts", {}))
    deployment = _one(rendered, "Deployment", "multinic-operator")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["command"][0] in scripts
    # The operator renders the agent DaemonSet with these commands.
    assert {"multinic-agent", "multinic-operator"} <= scripts


def test_the_image_carries_the_compiled_shim_where_install_cni_takes_it_from() -> None:
    """The runtime execs the shim on the host, which may have no Python: it must be compiled."""
    from multinic_agent.shim_build import PREBUILT_SHIM

    dockerfile = (DEPLOY / "Dockerfile").read_text()
    built = re.search(r"multinic-agent build-shim --output (\S+)", dockerfile)
    assert built is not None, "the image build does not compile the shim"
    copied = re.search(rf"^COPY --from=\S+ {re.escape(built.group(1))} (\S+)$", dockerfile, re.M)
    assert copied is not None, "the compiled shim is not copied into the final image"
    assert copied.group(1) == str(PREBUILT_SHIM)
    build_stage = dockerfile.split("FROM")[1]
    assert "gcc" in build_stage
    assert "libc6-dev" in build_stage


# --------------------------------------------------------------------------- the Helm chart
# deploy/helm/multinic, linted and rendered by the real helm binary (from the Go
# module proxy through scripts/build-counterparts; CI builds it before the tests).
# With default values (and the namespace created, as the base does) the chart
# renders exactly the kustomize base's objects, but for Helm's own labels.

CHART = DEPLOY / "helm" / "multinic"
HELM = REPO / ".cache" / "counterparts" / "bin" / "helm"
HELM_LABELS = ("app.kubernetes.io/managed-by", "helm.sh/chart")

needs_helm = pytest.mark.skipif(
    not HELM.exists(), reason="no helm binary: run scripts/build-counterparts helm"
)


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, check=False, timeout=120
    )


def render_chart(*values: str) -> list[dict[str, Any]]:
    result = helm(
        "template", "multinic", str(CHART), "--namespace", "multinic-system", "--include-crds",
        *[arg for value in values for arg in ("--set", value)],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _by_key(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for original in objects:
        obj = copy.deepcopy(original)
        labels = obj["metadata"].get("labels", {})
        for label in HELM_LABELS:
            labels.pop(label, None)
        if obj["kind"] == "CustomResourceDefinition":
            # Helm installs crds/ as they are (no templating, so no labels).
            obj["metadata"].pop("labels", None)
        found[(obj["kind"], obj["metadata"]["name"])] = obj
    return found


@needs_helm
def test_the_chart_lints_strictly() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@needs_helm
def test_default_values_render_the_kustomize_base_exactly() -> None:
    chart = _by_key(render_chart("createNamespace=true"))
    base = _by_key(render_kustomization(DEPLOY))
    assert sorted(chart) == sorted(base)
    for key, obj in base.items():
        assert chart[key] == obj, f"{key} differs between the chart and deploy/"


@needs_helm
def test_the_crds_are_the_generated_ones() -> None:
    for crd in sorted((DEPLOY / "crds").glob("*.yaml")):
        assert (CHART / "crds" / crd.name).read_text() == crd.read_text(), (
            f"{crd.name}: run `make crds`"
        )


@needs_helm
def test_values_move_images_config_and_rbac() -> None:
    objects = render_chart(
        "image.repository=registry.example/mn",
        "image.tag=2.0",
        "rbac.create=false",
        "config.logLevel=4",
        "operator.replicas=1",
    )
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert not any(kind.endswith(("Role", "RoleBinding")) for kind, _ in kinds)
    assert ("Namespace", "multinic-system") not in kinds, "helm --create-namespace does that"
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    agent_image = next(e["value"] for e in container["env"] if e["name"] == "MULTINIC_AGENT_IMAGE")
    config = next(o for o in objects if o["kind"] == "Config")
    assert (
        container["image"]
        == agent_image
        == config["spec"]["daemon"]["image"]
        == ("registry.example/mn:2.0")
    )
    assert deployment["spec"]["replicas"] == 1
    assert config["spec"]["logLevel"] == 4
    assert config["spec"]["daemon"]["mounts"][0]["hostpath"] == "/opt/cni/bin"


@needs_helm
def test_every_builtin_object_is_valid_for_a_current_kubernetes() -> None:
    assert_builtin_objects_valid(render_chart("createNamespace=true"))


# --------------------------------------------------------------------------- health ports


def _health_port(container: dict[str, Any]) -> int:
    """The port the container's command serves /healthz, /readyz and /metrics on."""
    from multinic_core.health import parse_bind_address

    command = container["command"]
    bind = parse_bind_address(command[command.index("--health-address") + 1])
    assert bind is not None
    assert bind.host == "", "the probes reach the pod's own address"
    return bind.port


def assert_probes_reach_the_health_port(pod_template: dict[str, Any], port: int) -> None:
    container = pod_template["spec"]["containers"][0]
    assert _health_port(container) == port
    assert container["ports"] == [{"name": "health", "containerPort": port, "protocol": "TCP"}]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = dict(container[probe]["httpGet"])
        assert get.pop("scheme", "HTTP") == "HTTP"  # kube-apiserver's default
        assert get == {"path": path, "port": "health"}
    annotations = pod_template["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_operator_probes_reach_the_port_it_serves(rendered: list[dict[str, Any]]) -> None:
    from multinic_operator.cli import DEFAULT_HEALTH_ADDRESS

    deployment = _one(rendered, "Deployment", "multinic-operator")
    assert_probes_reach_the_health_port(deployment["spec"]["template"], 9740)
    assert DEFAULT_HEALTH_ADDRESS == ":9740"


def test_the_agent_daemonset_from_the_deployed_config_is_valid_and_probes_its_port(
    rendered: list[dict[str, Any]],
) -> None:
    """The operator renders the agent DaemonSet from the Config in deploy/: check that one."""
    from multinic_agent.cli import DEFAULT_HEALTH_ADDRESS
    from multinic_core.models import Config, load_resource
    from multinic_operator.agent import agent_daemonset

    config = load_resource(Config, _one(rendered, "Config", "multi-nicd"))
    daemonset = agent_daemonset(config, "multinic-system")
    kubernetes_validate.validate(copy.deepcopy(daemonset), KUBERNETES_VERSION, strict=True)
    template = daemonset["spec"]["template"]
    assert_probes_reach_the_health_port(template, config.spec.daemon.port)
    # A journal replay may take a while: liveness counts only after the startup probe.
    startup = template["spec"]["containers"][0]["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    # The agent run by hand serves the same port the Config's default names.
    assert f":{Config().spec.daemon.port}" == DEFAULT_HEALTH_ADDRESS


@needs_helm
def test_values_move_the_operator_health_port() -> None:
    deployment = next(
        o for o in render_chart("operator.healthPort=9999") if o["kind"] == "Deployment"
    )
    assert_probes_reach_the_health_port(deployment["spec"]["template"], 9999)
