"""The Kubernetes manifests are valid and agree with the node's own configuration.

Validated offline: kubernetes-validate carries the Kubernetes OpenAPI schemas, so strict
validation (unknown fields rejected) needs no cluster. What a schema cannot know is
checked against the code: every KV_* variable is one `kv node start` reads, the seeds
name exactly the StatefulSet's pods through its headless service, the probes use the
port the node serves grpc.health.v1 on, and the disruption budget keeps a QUORUM.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore.cli.node_cmds import start as node_start

yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate (test extra)")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is a test extra: make install-test")

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "kvstore.yaml"


def _docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def _by_kind(kind: str) -> list[dict]:
    return [d for d in _docs() if d["kind"] == kind]


def test_every_resource_passes_strict_schema_validation():
    version = kubernetes_validate.latest_version()
    for doc in _docs():
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_typo_is_caught_by_the_schema_check():
    """The check can fail: an unknown field is rejected in strict mode."""
    (sts,) = _by_kind("StatefulSet")
    sts["spec"]["replica"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, kubernetes_validate.latest_version(), strict=True)


def _container() -> dict:
    (sts,) = _by_kind("StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    return container


def _env() -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in _container()["env"]}


def test_every_kv_variable_is_one_the_node_reads():
    known = {p.envvar for p in node_start.params if p.envvar}
    unknown = {name for name in _env() if name.startswith("KV_")} - known - {"KV_ENDPOINTS"}
    assert not unknown, f"the manifest sets variables `kv node start` ignores: {unknown}"


def test_seeds_name_every_pod_through_the_headless_service():
    (sts,) = _by_kind("StatefulSet")
    name, replicas, service = (sts["metadata"]["name"], sts["spec"]["replicas"],
                               sts["spec"]["serviceName"])
    headless = {s["metadata"]["name"]: s for s in _by_kind("Service")}[service]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    seeds = _env()["KV_SEEDS"].split(",")
    want = [f"{name}-{i}={name}-{i}.{service}.$(POD_NAMESPACE).svc:7001"
            for i in range(replicas)]
    assert seeds == want
    assert _env()["KV_NODE_ID"] == "$(POD_NAME)"
    assert _env()["KV_ADVERTISE"] == f"$(POD_NAME).{service}.$(POD_NAMESPACE).svc:7001"
    # $(VAR) references resolve only to variables defined earlier in the list
    names = [e["name"] for e in _container()["env"]]
    assert names.index("POD_NAME") < names.index("KV_NODE_ID")


def test_probes_ask_the_port_the_node_listens_on():
    container = _container()
    port = int(_env()["KV_LISTEN"].rsplit(":", 1)[1])
    assert {p["containerPort"] for p in container["ports"]} == {port}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == port


def test_the_disruption_budget_keeps_a_quorum():
    (pdb,) = _by_kind("PodDisruptionBudget")
    n = int(_env()["KV_REPLICATION_FACTOR"])
    assert pdb["spec"]["maxUnavailable"] <= (n - 1) // 2
