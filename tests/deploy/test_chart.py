"""The Helm chart in deploy/helm/relay, rendered and linted by Helm's own engine.

helm-python-sdk (import name `helm_python`) binds Helm's Go SDK, so `fail` in
_validate.tpl, values.schema.json and `helm lint` behave here exactly as in `helm install`; no
`helm` binary and no cluster are involved. Manifests are parsed with the same library's YAML
reader (sigs.k8s.io/yaml, what Kubernetes itself uses).
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from relay.config import SETTINGS, load_settings

CHART_DIR = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "relay"
WORKLOAD_KINDS = {"Deployment", "Job", "StatefulSet", "DaemonSet"}
REDIS = {"redis": {"existingSecret": "relay-secrets"}}
HA = {"replicaCount": 3, **REDIS}
# Every optional part switched on, at three pods.
EVERYTHING = {
    **HA,
    "hosts": ["relay.example.com", "other.example.org"],
    "ingress": {"enabled": True, "className": "nginx"},
    "metrics": {"serviceMonitor": {"enabled": True}},
    "migrations": {"job": {"enabled": True}},
}
AUTOSCALED = {**REDIS, "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 6}}
# What the referenced Secrets would hold, to run the rendered settings through the relay.
SECRET_VALUES = {
    "RELAY_DATABASE_URL": "postgresql://relay:pw@postgres.example:5432/relay",
    "RELAY_SECRET_KEY": "11" * 32,
    "RELAY_REDIS_URL": "redis://redis.example:6379/0",
    "RELAY_S3_ENDPOINT": "https://s3.example",
    "RELAY_S3_BUCKET": "relay-git",
    "RELAY_S3_ACCESS_KEY": "access",
    "RELAY_S3_SECRET_KEY": "secret",
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    helm.disable_logging()
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any] | None = None, **opts: Any) -> dict[str, str]:
    return chart.render(values or {}, name="relay", namespace="nostr", **opts)


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for part in text.split("\n---"):
            doc = helm.values_from_yaml(part)
            if doc:
                docs.append(doc)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def render_error(chart: helm.Chart, values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmRenderError) as caught:
        render(chart, values)
    return str(caught.value)


def deployment_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("valueFrom", e.get("value")) for e in container.get("env", [])}


# --- lint and schema ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "values", [{}, HA, EVERYTHING, AUTOSCALED], ids=["default", "ha", "all", "hpa"]
)
def test_chart_lints_without_warnings(values: dict[str, Any]) -> None:
    report = helm.lint(CHART_DIR, values, strict=True)
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems


def test_schema_accepts_the_defaults_and_refuses_a_misspelt_key(chart: helm.Chart) -> None:
    chart.validate_schema({})
    with pytest.raises(helm.HelmValuesError, match="replicas"):
        render(chart, {"replicas": 3})
    with pytest.raises(helm.HelmValuesError, match="replicaCount"):
        render(chart, {"replicaCount": "three"})


def test_schema_refuses_a_public_url_that_is_not_a_websocket_url(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmValuesError, match="publicUrl"):
        render(chart, {"publicUrl": "https://relay.example.com"})


# --- what renders ------------------------------------------------------------------------


def test_default_values_render(chart: helm.Chart) -> None:
    docs = manifests(render(chart))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    env = deployment_env(docs)
    # The defaults name one Secret, relay-secrets, for every credential (see values.yaml).
    for name in (
        "RELAY_DATABASE_URL",
        "RELAY_SECRET_KEY",
        "RELAY_S3_ENDPOINT",
        "RELAY_S3_BUCKET",
        "RELAY_S3_ACCESS_KEY",
        "RELAY_S3_SECRET_KEY",
    ):
        assert env[name] == {"secretKeyRef": {"name": "relay-secrets", "key": name}}
    assert "RELAY_REDIS_URL" not in env
    # The git scratch is a per-pod emptyDir by default.
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["git-scratch"]
    assert not by_kind(docs, "PersistentVolumeClaim")


def test_rendered_settings_are_accepted_by_the_relay(chart: helm.Chart) -> None:
    """ConfigMap data plus the Secrets' values load with relay.config, as in the pod."""
    for values in ({}, EVERYTHING, {"s3": {"endpoint": "https://s3.example", "bucket": "b"}}):
        docs = manifests(render(chart, values))
        data = one(docs, "ConfigMap")["data"]
        known = {s.env for s in SETTINGS}
        assert set(data) <= known, set(data) - known
        assert all(isinstance(v, str) for v in data.values())
        env = dict(data)
        for name, source in deployment_env(docs).items():
            assert "secretKeyRef" in source, f"{name} must come from a Secret"
            env[name] = SECRET_VALUES[name]
        settings = load_settings(env)
        assert settings.bind == "0.0.0.0"
        assert settings.git_max_pack_bytes == 268435456
        assert settings.git_scratch_dir == "/var/lib/relay/git-scratch"
        assert settings.hosts[0] == "relay.example.com"


def test_credentials_never_reach_the_config_map(chart: helm.Chart) -> None:
    data = one(manifests(render(chart, EVERYTHING)), "ConfigMap")["data"]
    for name in (
        "RELAY_DATABASE_URL",
        "RELAY_REDIS_URL",
        "RELAY_SECRET_KEY",
        "RELAY_S3_ACCESS_KEY",
        "RELAY_S3_SECRET_KEY",
    ):
        assert name not in data
    message = render_error(chart, {"extraConfig": {"RELAY_DATABASE_URL": "postgresql://x/y"}})
    assert "extraConfig.RELAY_DATABASE_URL is a credential" in message


def test_extra_config_reaches_the_config_map_but_cannot_override_the_chart(
    chart: helm.Chart,
) -> None:
    docs = manifests(render(chart, {"extraConfig": {"RELAY_MAX_SUBSCRIPTIONS": "500"}}))
    assert one(docs, "ConfigMap")["data"]["RELAY_MAX_SUBSCRIPTIONS"] == "500"
    message = render_error(chart, {"extraConfig": {"RELAY_SHUTDOWN_GRACE": "60"}})
    assert (
        "extraConfig.RELAY_SHUTDOWN_GRACE is set by the chart: use relay.shutdownGraceSeconds"
    ) in message


def test_trusted_proxies_and_loopback_limits_reach_the_relay(chart: helm.Chart) -> None:
    def settings_of(values: dict[str, Any]) -> Any:
        docs = manifests(render(chart, values))
        data = one(docs, "ConfigMap")["data"]
        return data, load_settings({**data, **SECRET_VALUES})

    data, settings = settings_of({})
    assert data["RELAY_TRUSTED_PROXIES"] == "" and settings.trusted_proxies == ()
    # In a pod, loopback clients are sidecars or port-forwards: limited like any other.
    assert data["RELAY_RATE_LIMIT_LOOPBACK"] == "on" and settings.rate_limit_loopback

    proxies = {"relay": {"trustedProxies": ["10.244.0.0/16", "fd00:10:244::/56", "192.0.2.7"]}}
    data, settings = settings_of(proxies)
    assert data["RELAY_TRUSTED_PROXIES"] == "10.244.0.0/16,fd00:10:244::/56,192.0.2.7"
    assert settings.trusted_proxies == (
        ip_network("10.244.0.0/16"), ip_network("fd00:10:244::/56"), ip_network("192.0.2.7/32"),
    )  # fmt: skip
    _, settings = settings_of({"relay": {"rateLimitLoopback": False}})
    assert not settings.rate_limit_loopback

    with pytest.raises(helm.HelmValuesError, match="trustedProxies"):
        render(chart, {"relay": {"trustedProxies": "10.0.0.0/8"}})  # a list, not a string
    with pytest.raises(helm.HelmValuesError, match="trustedProxies"):
        render(chart, {"relay": {"trustedProxies": ["ingress.internal"]}})
    message = render_error(chart, {"extraConfig": {"RELAY_TRUSTED_PROXIES": "0.0.0.0/0"}})
    assert "extraConfig.RELAY_TRUSTED_PROXIES is set by the chart: use relay.trustedProxies" in (
        message
    )


def test_three_replicas_with_redis_render_with_no_read_write_many(chart: helm.Chart) -> None:
    for values in (HA, EVERYTHING, AUTOSCALED):
        rendered = render(chart, values)
        assert "ReadWriteMany" not in "".join(rendered.values())
        docs = manifests(rendered)
        env = deployment_env(docs)
        assert env["RELAY_REDIS_URL"] == {
            "secretKeyRef": {"name": "relay-secrets", "key": "RELAY_REDIS_URL"}
        }
        spec = one(docs, "Deployment")["spec"]
        assert spec["strategy"]["type"] == "RollingUpdate"
        volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
        assert "emptyDir" in volumes["git-scratch"]
        assert spec["template"]["spec"]["topologySpreadConstraints"]
        assert not by_kind(docs, "PersistentVolumeClaim")
    spec = one(manifests(render(chart, HA)), "Deployment")["spec"]
    assert spec["replicas"] == 3
    assert one(manifests(render(chart, HA)), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_optional_parts(chart: helm.Chart) -> None:
    docs = manifests(render(chart, EVERYTHING))
    ingress = one(docs, "Ingress")
    hosts = [rule["host"] for rule in ingress["spec"]["rules"]]
    assert hosts == ["relay.example.com", "other.example.org"]
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    job = one(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-upgrade"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["migrate"]
    # A pre-upgrade hook runs before this release's ConfigMap changes: settings are inline.
    names = {e["name"] for e in container["env"]}
    assert "RELAY_DATABASE_URL" in names
    assert "envFrom" not in container

    docs = manifests(render(chart, AUTOSCALED))
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 6)
    assert "replicas" not in one(docs, "Deployment")["spec"]


def test_s3_location_in_values_and_unsigned_requests(chart: helm.Chart) -> None:
    values = {
        "s3": {
            "endpoint": "https://s3.example",
            "bucket": "b",
            "existingSecret": "",
            "unsigned": True,
        }
    }
    docs = manifests(render(chart, values))
    data = one(docs, "ConfigMap")["data"]
    assert (data["RELAY_S3_ENDPOINT"], data["RELAY_S3_BUCKET"]) == ("https://s3.example", "b")
    assert not {n for n in deployment_env(docs) if n.startswith("RELAY_S3_")}


# --- what is refused, and the message ----------------------------------------------------


def test_two_replicas_without_redis_fail_with_the_redis_message(chart: helm.Chart) -> None:
    message = render_error(chart, {"replicaCount": 2})
    assert "replicaCount=2 requires Redis" in message
    assert "redis.existingSecret" in message


def test_an_autoscaler_above_one_pod_without_redis_fails(chart: helm.Chart) -> None:
    message = render_error(chart, {"autoscaling": {"enabled": True, "minReplicas": 2}})
    assert "autoscaling (minReplicas=2, maxReplicas=10) can run more than one pod" in message
    assert "requires Redis" in message


def test_missing_postgres_fails(chart: helm.Chart) -> None:
    message = render_error(chart, {"database": {"existingSecret": ""}})
    assert "a Postgres source is required: set database.existingSecret" in message


def test_missing_s3_fails(chart: helm.Chart) -> None:
    message = render_error(chart, {"s3": {"existingSecret": "", "endpoint": ""}})
    assert "an S3 source is required" in message
    message = render_error(chart, {"s3": {"existingSecret": "", "endpoint": "https://s3.x"}})
    assert "s3.bucket is required with s3.endpoint" in message


def test_missing_signing_key_fails(chart: helm.Chart) -> None:
    message = render_error(chart, {"signingKey": {"existingSecret": ""}})
    assert "a relay signing key is required" in message


def test_missing_public_url_fails(chart: helm.Chart) -> None:
    message = render_error(chart, {"publicUrl": ""})
    assert "publicUrl is required" in message


@pytest.mark.parametrize("mode", ["ReadWriteOnce", "ReadWriteOncePod"])
@pytest.mark.parametrize(
    "pods",
    [
        {"replicaCount": 3},
        {"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4}},
    ],
    ids=["replicas", "autoscaler"],
)
@pytest.mark.parametrize("claim", ["", "my-scratch"], ids=["chart-claim", "existing-claim"])
def test_a_shared_single_node_claim_with_several_pods_fails(
    chart: helm.Chart, mode: str, pods: dict[str, Any], claim: str
) -> None:
    values = {
        **REDIS,
        **pods,
        "gitScratch": {
            "type": "persistentVolumeClaim",
            "persistentVolumeClaim": {"accessMode": mode, "existingClaim": claim},
        },
    }
    message = render_error(chart, values)
    expected = f"gitScratch.type=persistentVolumeClaim with accessMode={mode} is one claim shared"
    assert expected in message
    assert "gitScratch.type=emptyDir" in message


def test_per_pod_or_single_pod_scratch_claims_render(chart: helm.Chart) -> None:
    docs = manifests(render(chart, {**HA, "gitScratch": {"type": "ephemeral"}}))
    volumes = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    template = volumes["git-scratch"]["ephemeral"]["volumeClaimTemplate"]
    assert template["spec"]["accessModes"] == ["ReadWriteOnce"]
    # One pod may own a ReadWriteOnce claim; it is replaced with Recreate, never surged.
    docs = manifests(render(chart, {"gitScratch": {"type": "persistentVolumeClaim"}}))
    assert one(docs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert one(docs, "Deployment")["spec"]["strategy"]["type"] == "Recreate"


def test_termination_grace_must_outlast_the_relays_shutdown_grace(chart: helm.Chart) -> None:
    message = render_error(chart, {"terminationGracePeriodSeconds": 25})
    assert (
        "terminationGracePeriodSeconds=25 must be greater than relay.shutdownGraceSeconds=20 "
        "+ lifecycle.preStopSleepSeconds=5"
    ) in message
    render_error(chart, {"relay": {"shutdownGraceSeconds": 60}})
    render(chart, {"relay": {"shutdownGraceSeconds": 60}, "terminationGracePeriodSeconds": 90})


def test_startup_probe_outlasts_the_conformance_probe(chart: helm.Chart) -> None:
    message = render_error(chart, {"probes": {"startup": {"failureThreshold": 10}}})
    assert "probes.startup allows 50 s" in message
    render(
        chart,
        {"probes": {"startup": {"failureThreshold": 10}}, "git": {"probe": {"enabled": False}}},
    )


def test_every_problem_is_reported_at_once(chart: helm.Chart) -> None:
    message = render_error(
        chart, {"replicaCount": 2, "database": {"existingSecret": ""}, "publicUrl": ""}
    )
    for part in ("requires Redis", "a Postgres source is required", "publicUrl is required"):
        assert part in message


# --- every workload: probes, security context, resources ---------------------------------


def workloads(chart: helm.Chart) -> Iterator[tuple[str, dict[str, Any]]]:
    cases = {
        "default": {},
        "ha": HA,
        "all": EVERYTHING,
        "hpa": AUTOSCALED,
        "ephemeral": {**HA, "gitScratch": {"type": "ephemeral"}},
    }
    for case, values in cases.items():
        for doc in manifests(render(chart, values)):
            if doc["kind"] in WORKLOAD_KINDS:
                yield f"{case}/{doc['kind']}/{doc['metadata']['name']}", doc


def test_every_workload_has_probes_security_context_and_resources(chart: helm.Chart) -> None:
    seen = set()
    for where, doc in workloads(chart):
        seen.add(doc["kind"])
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] != 0, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is False, where
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            resources = container["resources"]
            assert resources["requests"]["cpu"] and resources["requests"]["memory"], where
            assert resources["limits"]["memory"], where
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"
            if doc["kind"] == "Job":
                continue  # a run-to-completion Job has no probes
            assert container["startupProbe"]["httpGet"]["path"] == "/healthz", where
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", where
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", where
            assert {"/var/lib/relay/data", "/var/lib/relay/git-scratch"} <= mounts, where
        if doc["kind"] == "Deployment":
            grace = float(pod["terminationGracePeriodSeconds"])
            assert grace > 20 + 5, where
    assert seen == {"Deployment", "Job"}


def test_config_change_rolls_the_pods(chart: helm.Chart) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = one(manifests(render(chart, values)), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"relay": {"logLevel": "debug"}})


def test_workers_reach_the_relay_and_size_the_cpu_request(chart: helm.Chart) -> None:
    def relay_container(values: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
        docs = manifests(render(chart, values))
        pod = one(docs, "Deployment")["spec"]["template"]["spec"]
        return one(docs, "ConfigMap")["data"], pod["containers"][0]["resources"]

    data, resources = relay_container({})
    assert data["RELAY_WORKERS"] == "1" and resources["requests"]["cpu"] == "250m"
    assert load_settings({**data, **SECRET_VALUES}).workers == 1
    data, resources = relay_container({"workers": 4})
    assert data["RELAY_WORKERS"] == "4" and resources["requests"]["cpu"] == "1000m"
    assert resources["requests"]["memory"] == "512Mi" and resources["limits"]["memory"] == "3Gi"
    assert load_settings({**data, **SECRET_VALUES}).workers == 4
    _, resources = relay_container({"workers": 4, "resources": {"requests": {"cpu": "3"}}})
    assert resources["requests"]["cpu"] == "3"  # the operator's own request wins
    data, _ = relay_container({"workers": "auto"})
    assert data["RELAY_WORKERS"] == "auto"
    with pytest.raises(helm.HelmValuesError, match="workers"):
        render(chart, {"workers": 0})
    with pytest.raises(helm.HelmValuesError, match="workers"):
        render(chart, {"workers": "many"})
