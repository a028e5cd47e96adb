"""The Helm chart (deploy/helm/spanrec) rendered by the real helm binary.

Every rendered manifest is validated against the Kubernetes JSON schemas of a
fixed version in strict mode (kubernetes-validate: unknown fields refused).
helm comes from scripts/get-helm (.tools/helm, or `helm` on PATH); without it
these tests skip.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "spanrec"
K8S_VERSION = "1.30.0"
#: custom resources: no schema in kubernetes-validate; checked by assertions instead
CRD_KINDS = {"ServiceMonitor"}


def _helm() -> str | None:
    local = ROOT / ".tools" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("helm")


HELM = _helm()
pytestmark = pytest.mark.skipif(HELM is None, reason="no helm binary: run scripts/get-helm")

INDEX_URL = "postgresql://spanrec@postgres.db.svc:5432/spanrec"
KEYS_DIR = "/etc/spanrec/keys"
RETENTION_JSON = '{"rules": [{"name": "trading", "match": ["to:+4969*", "from:+4969*"], "days": 3650}]}'

VALUE_SETS: dict[str, dict] = {
    "defaults": {},
    "self-contained": {
        "etcd": {"enabled": True, "replicas": 3},
        "minio": {"enabled": True},
        "tls": {"enabled": False},
    },
    "production": {
        "replicas": 3,
        "tls": {"enabled": True, "existingSecret": "ctl-tls"},
        "metrics": {"enabled": True, "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "otlp": {"endpoint": "http://otel-collector.monitoring:4317"},
        "service": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                    "loadBalancerSourceRanges": ["10.0.0.0/8"], "perPod": True},
        "controller": {"site": "fra1", "advertise": "$(POD_NAME).rec.example.net:7600", "shards": 4,
                       "recordOnly": ["sip:+4930*"], "env": {"SPANREC_LINGER_S": "5"}},
        "tolerations": [{"key": "voip", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "spanrec"}}}}]}},
    },
    "existing-secrets": {
        "s3": {"existingSecret": "s3-keys", "asFiles": True, "endpoint": "https://s3.example.net"},
        "registry": {"endpoints": "etcd-0:2379,etcd-1:2379",
                     "auth": {"existingSecret": "etcd-auth"}},
        "persistence": {"enabled": False},
        "pdb": {"enabled": False},
    },
    "plain-keys": {
        "s3": {"accessKey": "AKIA", "secretKey": "s3cr3t"},
        "registry": {"auth": {"user": "spanrec", "password": "pw"}},
    },
    "etcd-tls": {
        "registry": {"endpoints": "etcd-0.etcd:2379,etcd-1.etcd:2379",
                     "tls": {"existingSecret": "etcd-client", "serverName": "etcd.example.net"},
                     "auth": {"existingSecret": "etcd-auth"}},
    },
    "etcd-ca-only": {
        "registry": {"tls": {"existingSecret": "etcd-ca", "clientCert": False, "caKey": "root.pem"},
                     "auth": {"existingSecret": "etcd-auth"}},
    },
    "etcd-insecure": {
        "registry": {"endpoints": "etcd.infra:2379", "tls": {"enabled": False}, "insecure": True},
    },
    "index": {
        "index": {"url": INDEX_URL, "existingSecret": "pg-spanrec", "passwordKey": "pw"},
        "s3": {"existingSecret": "s3-keys"},
    },
    "web": {
        "index": {"url": INDEX_URL, "existingSecret": "pg-spanrec"},
        "s3": {"existingSecret": "s3-keys", "endpoint": "https://s3.example.net"},
        "controller": {"storage": "s3://calls/site-a"},
        "web": {"enabled": True, "replicas": 3, "tls": {"secretName": "web-tls"},
                "sessionKey": {"existingSecret": "web-session"}, "clientCertSecret": "web-operator",
                "service": {"type": "LoadBalancer", "annotations": {"a": "b"}},
                "tolerations": [{"key": "web", "operator": "Exists", "effect": "NoSchedule"}]},
    },
    "protection": {
        "index": {"url": INDEX_URL, "existingSecret": "pg-spanrec"},
        "s3": {"existingSecret": "s3-keys", "endpoint": "https://s3.example.net"},
        "controller": {"storage": "s3://calls/site-a"},
        "web": {"enabled": True, "replicas": 1},
        "protection": {"keysSecret": "spanrec-keys", "objectLock": "compliance", "retentionDays": 2555,
                       "s3Sse": "c", "retention": RETENTION_JSON, "expireEveryS": 900},
    },
    "web-lab": {
        "etcd": {"enabled": True},
        "minio": {"enabled": True},
        "tls": {"enabled": False},
        "index": {"url": "postgresql://spanrec@postgres:5432/spanrec"},
        "web": {"enabled": True, "replicas": 1, "insecureCookies": True},
    },
}


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HELM_CACHE_HOME": "/tmp/spanrec-helm-cache",
                               "HELM_CONFIG_HOME": "/tmp/spanrec-helm-config",
                               "HELM_DATA_HOME": "/tmp/spanrec-helm-data"})
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def _values_file(tmp_path: Path, values: dict) -> Path:
    path = tmp_path / "values.json"   # JSON is YAML
    path.write_text(json.dumps(values))
    return path


def render(tmp_path: Path, values: dict) -> list[dict]:
    out = helm("template", "rec", str(CHART), "--namespace", "voip",
               "-f", str(_values_file(tmp_path, values))).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def controller(docs: list[dict]) -> dict:
    (sts,) = [d for d in by_kind(docs, "StatefulSet") if d["metadata"]["name"] == "rec-spanrec"]
    return sts


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint(tmp_path: Path, name: str) -> None:
    proc = helm("lint", "--strict", str(CHART), "-f", str(_values_file(tmp_path, VALUE_SETS[name])))
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_renders_valid_kubernetes(tmp_path: Path, name: str) -> None:
    docs = render(tmp_path, VALUE_SETS[name])
    assert docs
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue   # not in the Kubernetes schemas (see test_production)
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} "
                                 f"at {list(exc.path)}") from None


def test_defaults(tmp_path: Path) -> None:
    docs = render(tmp_path, {})
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["PodDisruptionBudget", "Service", "Service", "Service",
                     "ServiceAccount", "StatefulSet"]
    sts = controller(docs)
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["spanrec", "controller"]
    assert c["image"] == "spanrec:0.1.0"
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    env = env_of(c)
    assert env["SPANREC_LISTEN"]["value"] == "0.0.0.0:7600"
    assert env["SPANREC_STATE_DIR"]["value"] == "/var/lib/spanrec"
    assert env["SPANREC_CONTROLLER_ID"]["value"] == "$(POD_NAME)"
    assert env["SPANREC_ADVERTISE"]["value"] == "$(POD_NAME).rec-spanrec-headless.voip.svc.cluster.local:7600"
    assert env["SPANREC_ETCD"]["value"] == "etcd:2379"
    assert env["SPANREC_S3_ENDPOINT"]["value"] == "http://minio:9000"
    assert env["SPANREC_TLS_CA"]["value"] == "/etc/spanrec/tls/ca.crt"
    assert "SPANREC_INSECURE" not in env
    assert "SPANREC_METRICS_LISTEN" not in env
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {"state": "/var/lib/spanrec", "tmp": "/tmp", "tls": "/etc/spanrec/tls",
                      "etcd-tls": "/etc/spanrec/etcd-tls"}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in vols["tmp"]
    assert vols["tls"]["secret"]["secretName"] == "spanrec-controller-tls"
    # etcd over TLS by default (a plain-text remote etcd makes the controller exit 2)
    assert vols["etcd-tls"]["secret"]["secretName"] == "spanrec-etcd-tls"
    assert env["SPANREC_ETCD_CA"]["value"] == "/etc/spanrec/etcd-tls/ca.crt"
    assert env["SPANREC_ETCD_CERT"]["value"] == "/etc/spanrec/etcd-tls/tls.crt"
    assert env["SPANREC_ETCD_KEY"]["value"] == "/etc/spanrec/etcd-tls/tls.key"
    assert "SPANREC_ETCD_INSECURE" not in env and "SPANREC_ETCD_SERVER_NAME" not in env
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "state"
    # 2 pods x 2 shards, drained on SIGTERM (new calls go to the other pod; the
    # pod's calls finish before it exits): keep-calls is then off
    assert sts["spec"]["replicas"] == 2
    assert env["SPANREC_SHARDS"]["value"] == "2"
    assert env["SPANREC_KEEP_CALLS_ON_STOP"]["value"] == "false"
    assert env["SPANREC_DRAIN_LIMIT_S"]["value"] == "600"
    assert env["SPANREC_SHARD_GRACE_S"]["value"] == "300"
    assert pod["terminationGracePeriodSeconds"] > 600
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": 7600, "grpc-1": 7601}
    # mTLS on: the kubelet's plain-text gRPC probe goes to the health-only port
    assert env["SPANREC_HEALTH_LISTEN"]["value"] == "0.0.0.0:7700"
    assert c["livenessProbe"]["grpc"] == {"port": 7700, "service": ""}
    assert c["readinessProbe"]["grpc"] == {"port": 7700, "service": "spanrec.v1.SensorLink"}
    services = {s["metadata"]["name"]: s["spec"] for s in by_kind(docs, "Service")}
    assert services["rec-spanrec"]["ports"][0]["port"] == 7600
    assert services["rec-spanrec-admin"]["ports"][0]["port"] == 7600
    assert services["rec-spanrec-headless"]["clusterIP"] == "None"
    assert [p["port"] for p in services["rec-spanrec-headless"]["ports"]] == [7600, 7601]
    assert sts["spec"]["serviceName"] == "rec-spanrec-headless"
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1          # one pod drains or restarts at a time


def test_self_contained(tmp_path: Path) -> None:
    docs = render(tmp_path, VALUE_SETS["self-contained"])
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("StatefulSet", "rec-etcd") in names and ("Deployment", "rec-minio") in names
    (etcd,) = [d for d in by_kind(docs, "StatefulSet") if d["metadata"]["name"] == "rec-etcd"]
    assert etcd["spec"]["replicas"] == 3
    assert etcd["spec"]["template"]["spec"]["containers"][0]["image"].startswith("quay.io/coreos/etcd:")
    (c,) = controller(docs)["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    assert env["SPANREC_ETCD"]["value"] == "rec-etcd:2379"
    assert env["SPANREC_S3_ENDPOINT"]["value"] == "http://rec-minio:9000"
    assert env["SPANREC_S3_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "rec-minio", "key": "rootUser"}
    assert env["SPANREC_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "rec-minio", "key": "rootPassword"}
    assert env["SPANREC_INSECURE"]["value"] == "true"
    # the in-chart etcd is plain text: the opt-in is set for it, no etcd TLS files
    assert env["SPANREC_ETCD_INSECURE"]["value"] == "true"
    assert "SPANREC_ETCD_CA" not in env
    assert "etcd-tls" not in {v["name"] for v in controller(docs)["spec"]["template"]["spec"]["volumes"]}
    # plain text: the kubelet probes gRPC health (grpc.health.v1) on the port
    assert c["livenessProbe"]["grpc"] == {"port": 7600, "service": ""}
    assert c["readinessProbe"]["grpc"] == {"port": 7600, "service": "spanrec.v1.SensorLink"}


def test_production(tmp_path: Path) -> None:
    docs = render(tmp_path, VALUE_SETS["production"])
    sts = controller(docs)
    assert sts["spec"]["replicas"] == 3
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    assert env["SPANREC_METRICS_LISTEN"]["value"] == "0.0.0.0:9464"
    assert env["SPANREC_OTLP_ENDPOINT"]["value"] == "http://otel-collector.monitoring:4317"
    assert env["SPANREC_ADVERTISE"]["value"] == "$(POD_NAME).rec.example.net:7600"
    assert env["SPANREC_SHARDS"]["value"] == "4"
    assert env["SPANREC_RECORD_ONLY"]["value"] == "sip:+4930*"
    assert env["SPANREC_LINGER_S"]["value"] == "5"
    assert env["SPANREC_TLS_CERT"]["value"] == "/etc/spanrec/tls/tls.crt"
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert [e["port"] for e in sm["spec"]["endpoints"]] == ["metrics", "metrics-1", "metrics-2", "metrics-3"]
    (admin,) = [s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "rec-spanrec-admin"]
    assert {p["name"]: p["port"] for p in admin["spec"]["ports"]} == {
        "admin": 7600, "metrics": 9464, "metrics-1": 9465, "metrics-2": 9466, "metrics-3": 9467}
    # sensors outside the cluster reach every shard of every pod through its own Service
    per_pod = {s["metadata"]["name"]: s["spec"] for s in by_kind(docs, "Service")
               if s["spec"].get("selector", {}).get("statefulset.kubernetes.io/pod-name")}
    assert sorted(per_pod) == ["rec-spanrec-0", "rec-spanrec-1", "rec-spanrec-2"]
    assert [p["port"] for p in per_pod["rec-spanrec-2"]["ports"]] == [7600, 7601, 7602, 7603]
    assert per_pod["rec-spanrec-2"]["type"] == "LoadBalancer"
    # the ServiceMonitor selects the admin Service only
    assert sm["spec"]["selector"]["matchLabels"].items() <= admin["metadata"]["labels"].items()


def test_existing_secrets(tmp_path: Path) -> None:
    docs = render(tmp_path, VALUE_SETS["existing-secrets"])
    assert not by_kind(docs, "Secret") and not by_kind(docs, "PodDisruptionBudget")
    sts = controller(docs)
    assert "volumeClaimTemplates" not in sts["spec"]
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = env_of(c)
    assert env["SPANREC_S3_ACCESS_KEY_FILE"]["value"] == "/etc/spanrec/s3/access-key"
    assert "SPANREC_S3_ACCESS_KEY" not in env
    assert env["SPANREC_ETCD_USER"]["valueFrom"]["secretKeyRef"] == {"name": "etcd-auth", "key": "username"}
    assert env["SPANREC_ETCD_PASSWORD_FILE"]["value"] == "/etc/spanrec/etcd/password"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["s3"]["secret"]["secretName"] == "s3-keys"
    assert vols["etcd-auth"]["secret"]["secretName"] == "etcd-auth"
    assert "emptyDir" in vols["state"]


def test_plain_keys_make_secrets(tmp_path: Path) -> None:
    docs = render(tmp_path, VALUE_SETS["plain-keys"])
    secrets = {s["metadata"]["name"] for s in by_kind(docs, "Secret")}
    assert secrets == {"rec-spanrec-s3", "rec-spanrec-etcd-auth"}
    (c,) = controller(docs)["spec"]["template"]["spec"]["containers"]
    assert env_of(c)["SPANREC_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "rec-spanrec-s3", "key": "secret-key"}


def test_etcd_tls_mounts_and_env(tmp_path: Path) -> None:
    docs = render(tmp_path, VALUE_SETS["etcd-tls"])
    pod = controller(docs)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = env_of(c)
    assert env["SPANREC_ETCD"]["value"] == "etcd-0.etcd:2379,etcd-1.etcd:2379"
    assert env["SPANREC_ETCD_CA"]["value"] == "/etc/spanrec/etcd-tls/ca.crt"
    assert env["SPANREC_ETCD_CERT"]["value"] == "/etc/spanrec/etcd-tls/tls.crt"
    assert env["SPANREC_ETCD_KEY"]["value"] == "/etc/spanrec/etcd-tls/tls.key"
    assert env["SPANREC_ETCD_SERVER_NAME"]["value"] == "etcd.example.net"
    assert env["SPANREC_ETCD_USER"]["valueFrom"]["secretKeyRef"] == {"name": "etcd-auth", "key": "username"}
    assert "SPANREC_ETCD_INSECURE" not in env
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "etcd-tls"]
    assert mount == {"name": "etcd-tls", "mountPath": "/etc/spanrec/etcd-tls", "readOnly": True}
    (vol,) = [v for v in pod["volumes"] if v["name"] == "etcd-tls"]
    assert vol["secret"]["secretName"] == "etcd-client"
    assert vol["secret"]["defaultMode"] == 0o440
    assert vol["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"},
                                      {"key": "tls.crt", "path": "tls.crt"},
                                      {"key": "tls.key", "path": "tls.key"}]


def test_etcd_ca_only_and_insecure(tmp_path: Path) -> None:
    pod = controller(render(tmp_path, VALUE_SETS["etcd-ca-only"]))["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert env["SPANREC_ETCD_CA"]["value"] == "/etc/spanrec/etcd-tls/ca.crt"
    assert "SPANREC_ETCD_CERT" not in env and "SPANREC_ETCD_KEY" not in env
    (vol,) = [v for v in pod["volumes"] if v["name"] == "etcd-tls"]
    assert vol["secret"]["items"] == [{"key": "root.pem", "path": "ca.crt"}]
    pod = controller(render(tmp_path, VALUE_SETS["etcd-insecure"]))["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert env["SPANREC_ETCD_INSECURE"]["value"] == "true"
    assert not [k for k in env if k in ("SPANREC_ETCD_CA", "SPANREC_ETCD_CERT", "SPANREC_ETCD_KEY")]
    assert "etcd-tls" not in {v["name"] for v in pod["volumes"]}


@pytest.fixture(scope="module")
def etcd_pki(tmp_path_factory) -> Path:
    from tests.transport.procs import make_certs
    root = tmp_path_factory.mktemp("etcd-pki")
    make_certs(root, "ca")
    make_certs(root, "client", "rec-spanrec-0")
    (root / "password").write_text("pw\n")
    return root


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_etcd_settings_let_the_controller_start(tmp_path: Path, name: str, etcd_pki: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller's own start-up check (cli.settings -> registry.EtcdSecurity) accepts
    the rendered environment: no exit 2. Files named in it are mounted from a Secret
    item; here they are certificates from scripts/make-certs."""
    from cli.settings import ControllerSettings, load
    pod = controller(render(tmp_path, VALUE_SETS[name]))["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    vols = {v["name"]: v for v in pod["volumes"]}
    mounted = {}
    for m in c["volumeMounts"]:
        for item in vols.get(m["name"], {}).get("secret", {}).get("items", []):
            mounted[f"{m['mountPath']}/{item['path']}"] = item["key"]
    local = {"ca.crt": "ca.crt", "tls.crt": "rec-spanrec-0.crt", "tls.key": "rec-spanrec-0.key",
             "root.pem": "ca.crt", "password": "password"}
    for key in list(os.environ):
        if key.startswith("SPANREC_"):
            monkeypatch.delenv(key)
    for e in c["env"]:
        if "valueFrom" in e:
            value = "spanrec"                          # a Secret's value (user, S3 keys)
        else:
            value = e["value"].replace("$(POD_NAME)", "rec-spanrec-0")
        if e["name"].startswith("SPANREC_ETCD_") and value.startswith("/etc/spanrec/"):
            assert value in mounted, f"{e['name']}={value} is not a mounted Secret item"
            value = str(etcd_pki / local[mounted[value]])
        monkeypatch.setenv(e["name"], value)
    settings = load(ControllerSettings, "controller", None, {})
    sec = settings.etcd_security()                   # raises ConfigError (exit 2) when refused
    expect_tls = not VALUE_SETS[name].get("etcd", {}).get("enabled") and \
        VALUE_SETS[name].get("registry", {}).get("tls", {}).get("enabled", True)
    assert sec.tls is bool(expect_tls)
    assert sec.insecure is (not expect_tls)


@pytest.mark.parametrize("values, message", [
    ({"replicas": "two"}, "/replicas"),
    ({"registry": {"endpoints": ""}}, "need the etcd registry"),
    ({"controller": {"shards": 0}}, "/controller/shards"),
    ({"controller": {"drainLimitS": 900}}, "must exceed controller.drainLimitS"),
    ({"probes": {"healthPort": 7601}}, "overlap probes.healthPort"),
    ({"replicaCount": 2}, "replicaCount"),
    ({"controller": {"audioFormat": "mp3"}}, "/controller/audioFormat"),
    ({"tls": {"enabeld": True}}, "enabeld"),
    ({"etcd": {"enabled": True, "replicas": "3"}}, "/etcd/replicas"),
    ({"minio": {"persistance": {}}}, "persistance"),
    ({"controller": {"env": {"LINGER": "5"}}}, "LINGER"),
    ({"metrics": {"serviceMonitor": {"enabled": True}}}, "needs metrics.enabled"),
    ({"tls": {"existingSecret": ""}}, "tls.existingSecret"),
    ({"registry": {"tls": {"existingSecret": ""}}}, "registry.tls.existingSecret"),
    ({"registry": {"tls": {"enabled": False}}}, "needs registry.insecure=true"),
    ({"registry": {"insecure": True}}, "exclude each other"),
    ({"registry": {"insecure": "yes"}}, "/registry/insecure"),
    ({"registry": {"tls": {"enabled": False}, "insecure": True, "auth": {"existingSecret": "etcd-auth"}}},
     "refusing to send the etcd user and password in plain text"),
    ({"registry": {"auth": {"user": "spanrec", "password": "pw"}}, "etcd": {"enabled": True}},
     "the in-chart etcd is plain text without auth"),
    # the call index and the web player
    ({"index": {"url": "postgresql://spanrec:s3cr3t@db/spanrec"}}, "put no password in the URL"),
    ({"index": {"url": "sqlite:///var/lib/spanrec/index.sqlite"}}, "/index/url"),
    ({"index": {"url": "postgresql://db/spanrec"}}, "/index/url"),
    ({"index": {"existingSecret": "pg"}}, "index.existingSecret is set but index.url is empty"),
    ({"index": {"password": "pw"}}, "password"),
    ({"web": {"enabled": True}}, "web.enabled needs index.url"),
    ({"web": {"enabled": True, "replicas": 1}}, "web.enabled needs index.url"),
    ({"web": {"enabled": True}, "index": {"url": INDEX_URL}},
     "web.replicas=2 needs web.sessionKey.existingSecret"),
    ({"web": {"enabled": True, "replicas": 1}, "index": {"url": INDEX_URL},
      "controller": {"storage": "/var/lib/spanrec/calls"}}, "web.enabled needs S3 storage"),
    ({"web": {"enabled": True, "replicas": 1, "controller": "ctl.example:7600"}, "index": {"url": INDEX_URL}},
     "web.controller with tls.enabled needs web.clientCertSecret"),
    ({"web": {"enabled": True, "replicas": 1, "controller": "no-port"}, "index": {"url": INDEX_URL}},
     "/web/controller"),
    ({"web": {"replica": 2}}, "replica"),
    ({"web": {"enabled": "yes"}}, "/web/enabled"),
    ({"web": {"sessionKey": {"secret": "x"}}}, "secret"),
    ({"web": {"service": {"type": "Ingress"}}}, "/web/service/type"),
    # keeping recordings (protection.*)
    ({"protection": {"s3Sse": "c"}, "s3": {"endpoint": "https://s3.example.net"}},
     "protection.s3Sse=c needs protection.keysSecret"),
    ({"protection": {"s3Sse": "c", "keysSecret": "spanrec-keys"}},
     "protection.s3Sse=c needs an https:// S3 endpoint, not http://minio:9000"),
    ({"protection": {"s3Sse": "c", "keysSecret": "spanrec-keys"}, "minio": {"enabled": True}},
     "protection.s3Sse=c needs an https:// S3 endpoint, not http://rec-minio:9000"),
    ({"protection": {"objectLock": "compliance"}, "controller": {"storage": "/var/lib/spanrec/calls"}},
     "protection.objectLock=compliance needs S3 storage"),
    ({"protection": {"s3Sse": "s3"}, "controller": {"storage": "file:///var/lib/spanrec/calls"}},
     "protection.s3Sse=s3 needs S3 storage"),
    ({"protection": {"s3Sse": "c", "keysSecret": "spanrec-keys"}, "s3": {"endpoint": "https://s3.example.net"},
      "controller": {"storage": "/var/lib/spanrec/calls"}}, "protection.s3Sse=c needs S3 storage"),
    ({"protection": {"retentionDays": 0}}, "/protection/retentionDays"),
    ({"protection": {"retentionDays": 36601}}, "/protection/retentionDays"),
    ({"protection": {"retentionDays": "2555"}}, "/protection/retentionDays"),
    ({"protection": {"expireEveryS": -1}}, "/protection/expireEveryS"),
    ({"protection": {"objectLock": "Compliance"}}, "/protection/objectLock"),
    ({"protection": {"s3Sse": "kms"}}, "/protection/s3Sse"),
    ({"protection": {"keysSecret": "Spanrec_Keys"}}, "/protection/keysSecret"),
    ({"protection": {"encrypt": "yes"}}, "/protection/encrypt"),
    ({"protection": {"retentionYears": 7}}, "retentionYears"),
])
def test_bad_values_refused(tmp_path: Path, values: dict, message: str) -> None:
    proc = helm("template", "rec", str(CHART), "-f", str(_values_file(tmp_path, values)), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_notes_tell_spanrecctl_and_sensors() -> None:
    proc = helm("install", "rec", str(CHART), "--dry-run=client", "--namespace", "voip")
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "port-forward svc/rec-spanrec-admin 7600:7600" in notes
    assert "spanrecctl fleet --controller 127.0.0.1:7600" in notes
    assert "--tls-cert" in notes and "--tls-ca" in notes
    assert "install-sensor.sh --interface" in notes and "--site" in notes and "--etcd" in notes
    assert "etcd:2379 over TLS (Secret spanrec-etcd-tls" in notes and "--etcd-ca" in notes
    proc = helm("install", "rec", str(CHART), "--dry-run=client", "--namespace", "voip",
                "--set", "etcd.enabled=true", "--set", "tls.enabled=false")
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "plain text without auth (SPANREC_ETCD_INSECURE=true)" in notes and "tests only" in notes


def test_one_pod_one_shard_without_etcd(tmp_path: Path) -> None:
    """The lab setting: one pod, one shard, no registry — renders (a ring needs etcd)."""
    docs = render(tmp_path, {"replicas": 1, "controller": {"shards": 1}, "registry": {"endpoints": ""}})
    (c,) = controller(docs)["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    assert env["SPANREC_SHARDS"]["value"] == "1" and "SPANREC_ETCD" not in env
    assert [p["name"] for p in c["ports"]] == ["grpc"]


# -- the call index and the web player ------------------------------------------------

def web_objects(docs: list[dict]) -> tuple[dict, dict]:
    (dep,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "rec-spanrec-web"]
    (svc,) = [d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "rec-spanrec-web"]
    return dep, svc


def _strings(obj) -> list[str]:
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return [obj] if isinstance(obj, str) else []


def test_no_index_and_no_web_by_default(tmp_path: Path) -> None:
    docs = render(tmp_path, {})
    assert not by_kind(docs, "Deployment")
    (c,) = controller(docs)["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    assert "SPANREC_INDEX" not in env and "SPANREC_INDEX_PASSWORD" not in env


def test_index_url_and_password_from_the_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(tmp_path, VALUE_SETS["index"])
    assert not by_kind(docs, "Deployment")            # the index alone: no web player
    (c,) = controller(docs)["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    # the controller's --index, set as its environment like every controller setting
    assert env["SPANREC_INDEX"]["value"] == INDEX_URL
    assert env["SPANREC_INDEX_PASSWORD"] == {"name": "SPANREC_INDEX_PASSWORD", "valueFrom": {
        "secretKeyRef": {"name": "pg-spanrec", "key": "pw"}}}
    # never a password in the command line or a plain value: no args at all, no
    # user:password@ in any string of the pod
    assert c["command"] == ["spanrec", "controller"] and "args" not in c
    assert not [v for v in _strings(docs) if re.search(r"://[^/@]*:[^/@]*@", v)]
    # the controller takes what the chart rendered (flags > SPANREC_* env)
    from callindex.db import check_url
    from cli.settings import ControllerSettings, load
    for key in list(os.environ):
        if key.startswith("SPANREC_") or key == "PGPASSWORD":
            monkeypatch.delenv(key)
    monkeypatch.setenv("SPANREC_INDEX", env["SPANREC_INDEX"]["value"])
    monkeypatch.setenv("SPANREC_INDEX_PASSWORD", "from-the-secret")
    monkeypatch.setenv("SPANREC_INSECURE", "true")
    settings = load(ControllerSettings, "controller", None, {})
    assert settings.index == INDEX_URL and settings.index_password_file is None
    # accepted; the password comes from SPANREC_INDEX_PASSWORD and is never shown
    assert check_url(settings.index) == "postgresql://spanrec:***@postgres.db.svc:5432/spanrec"


def test_web_player(tmp_path: Path) -> None:
    docs = render(tmp_path, VALUE_SETS["web"])
    dep, svc = web_objects(docs)
    assert dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == controller(docs)["spec"]["template"]["spec"]["containers"][0]["image"]
    assert c["command"] == ["spanrec", "web"]
    assert c["args"] == [
        "--listen", "0.0.0.0:8080", "--index", INDEX_URL, "--storage", "s3://calls/site-a",
        "--log-level", "info",
        "--tls-cert", "/etc/spanrec/web-tls/tls.crt", "--tls-key", "/etc/spanrec/web-tls/tls.key",
        "--session-key-file", "/etc/spanrec/web-session/session-key",
        "--controller", "rec-spanrec-admin.voip.svc:7600"]
    env = env_of(c)
    assert env["SPANREC_INDEX_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "pg-spanrec", "key": "password"}
    assert env["SPANREC_S3_ENDPOINT"]["value"] == "https://s3.example.net"
    assert env["SPANREC_S3_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3-keys", "key": "access-key"}
    assert env["SPANREC_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3-keys", "key": "secret-key"}
    assert env["SPANREC_TLS_CERT"]["value"] == "/etc/spanrec/tls/tls.crt"
    assert env["SPANREC_TLS_KEY"]["value"] == "/etc/spanrec/tls/tls.key"
    assert env["SPANREC_TLS_CA"]["value"] == "/etc/spanrec/tls/ca.crt"
    assert "SPANREC_INSECURE" not in env
    # HTTPS in the pod: the probes speak it on the named port
    assert c["ports"] == [{"name": "https", "containerPort": 8080, "protocol": "TCP"}]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/login", "port": "https", "scheme": "HTTPS"}, probe
    # mounts: every file named in the args/env comes from a Secret item
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert {n: m["mountPath"] for n, m in mounts.items()} == {
        "tmp": "/tmp", "web-tls": "/etc/spanrec/web-tls", "session-key": "/etc/spanrec/web-session",
        "client-tls": "/etc/spanrec/tls"}
    assert all(m.get("readOnly") for n, m in mounts.items() if n != "tmp")
    vols = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in vols["tmp"]
    assert vols["web-tls"]["secret"]["secretName"] == "web-tls"
    assert vols["session-key"]["secret"] == {"secretName": "web-session", "defaultMode": 0o440,
                                             "items": [{"key": "session-key", "path": "session-key"}]}
    assert vols["client-tls"]["secret"]["secretName"] == "web-operator"
    files = {f"{mounts[name]['mountPath']}/{item['path']}"
             for name, v in vols.items() for item in v.get("secret", {}).get("items", [])}
    named = [a for a in c["args"] + [e.get("value", "") for e in c["env"]] if a.startswith("/etc/spanrec/")]
    assert named and set(named) <= files
    # the controller's security settings
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["automountServiceAccountToken"] is False
    assert pod["tolerations"] == [{"key": "web", "operator": "Exists", "effect": "NoSchedule"}]
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    # Service: 443 with TLS, selecting the web pods only (and the controller's Services not them)
    assert svc["spec"]["type"] == "LoadBalancer" and svc["metadata"]["annotations"] == {"a": "b"}
    assert svc["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP",
                                     "appProtocol": "https"}]
    web_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= web_labels.items()
    assert dep["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    for other in by_kind(docs, "Service"):
        if other is not svc:
            assert not other["spec"]["selector"].items() <= web_labels.items(), other["metadata"]["name"]
    ctl_labels = controller(docs)["spec"]["template"]["metadata"]["labels"]
    assert not svc["spec"]["selector"].items() <= ctl_labels.items()
    pdbs = {p["metadata"]["name"]: p["spec"] for p in by_kind(docs, "PodDisruptionBudget")}
    assert pdbs["rec-spanrec-web"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert pdbs["rec-spanrec"]["selector"]["matchLabels"].items() <= ctl_labels.items()
    # the controllers index into the same database
    (ctl,) = controller(docs)["spec"]["template"]["spec"]["containers"]
    assert env_of(ctl)["SPANREC_INDEX"]["value"] == INDEX_URL


def test_web_args_parse_with_spanrec_web(tmp_path: Path) -> None:
    """The rendered command line is one `spanrec web` takes (its own click options;
    the mounted files replaced by local ones)."""
    from cli.web import web_cmd
    (c,) = web_objects(render(tmp_path, VALUE_SETS["web"]))[0]["spec"]["template"]["spec"]["containers"]
    for name in ("tls.crt", "tls.key", "session-key"):
        (tmp_path / name).write_text("x" * 40)
    args = [str(tmp_path / Path(a).name) if a.startswith("/etc/spanrec/") else a for a in c["args"]]
    ctx = web_cmd.make_context("web", args)
    p = ctx.params
    assert p["listen"] == "0.0.0.0:8080" and p["index_url"] == INDEX_URL
    assert p["storage"] == "s3://calls/site-a" and p["controller"] == "rec-spanrec-admin.voip.svc:7600"
    assert p["session_key_file"] and p["tls_cert"] and p["tls_key"] and p["insecure_cookies"] is False


def test_web_lab_plain_http(tmp_path: Path) -> None:
    docs = render(tmp_path, VALUE_SETS["web-lab"])
    dep, svc = web_objects(docs)
    assert dep["spec"]["replicas"] == 1
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["--listen", "0.0.0.0:8080", "--index", "postgresql://spanrec@postgres:5432/spanrec",
                         "--storage", "s3://spanrec-recordings", "--log-level", "info",
                         "--insecure-cookies", "--controller", "rec-spanrec-admin.voip.svc:7600"]
    env = env_of(c)
    assert env["SPANREC_INSECURE"]["value"] == "true"     # the chart's controller is plain text
    assert env["SPANREC_S3_ENDPOINT"]["value"] == "http://rec-minio:9000"
    assert env["SPANREC_S3_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "rec-minio", "key": "rootUser"}
    assert "SPANREC_INDEX_PASSWORD" not in env             # no index.existingSecret
    assert not [k for k in env if k.startswith("SPANREC_TLS_")]
    assert c["readinessProbe"]["httpGet"] == {"path": "/login", "port": "http", "scheme": "HTTP"}
    assert {m["name"] for m in c["volumeMounts"]} == {"tmp"}
    assert svc["spec"]["ports"][0]["port"] == 8080 and svc["spec"]["ports"][0]["targetPort"] == "http"


def test_web_without_operator_certificate_has_no_active_calls(tmp_path: Path) -> None:
    """mTLS on the Admin API and no client certificate: no --controller (the page
    says none is configured) rather than a controller it cannot speak to."""
    docs = render(tmp_path, {"index": {"url": INDEX_URL}, "web": {
        "enabled": True, "sessionKey": {"existingSecret": "web-session", "key": "k"},
        "service": {"port": 8443}, "port": 9090}})
    dep, svc = web_objects(docs)
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert "--controller" not in c["args"] and "--insecure-cookies" not in c["args"]
    assert c["args"][:2] == ["--listen", "0.0.0.0:9090"]
    env = env_of(c)
    assert "SPANREC_INSECURE" not in env and "SPANREC_TLS_CERT" not in env
    (vol,) = [v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "session-key"]
    assert vol["secret"]["items"] == [{"key": "k", "path": "session-key"}]
    assert c["ports"][0]["containerPort"] == 9090
    assert svc["spec"]["ports"][0]["port"] == 8443
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_web_without_pdb(tmp_path: Path) -> None:
    docs = render(tmp_path, {**VALUE_SETS["web"], "pdb": {"enabled": False}})
    assert not by_kind(docs, "PodDisruptionBudget")
    assert web_objects(docs)


def test_notes_tell_the_web_player_and_the_first_admin(tmp_path: Path) -> None:
    proc = helm("install", "rec", str(CHART), "--dry-run=client", "--namespace", "voip",
                "-f", str(_values_file(tmp_path, VALUE_SETS["web"])))
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "port-forward svc/rec-spanrec-web 8443:443" in notes and "https://localhost:8443/" in notes
    assert "kubectl -n voip exec -i deploy/rec-spanrec-web -- " in notes
    assert f"spanrec user add admin --role admin --index '{INDEX_URL}'" in notes
    assert "read -rs PASSWORD" in notes and "printf '%s\\n' \"$PASSWORD\" |" in notes
    assert "not deployed by this chart" in notes
    proc = helm("install", "rec", str(CHART), "--dry-run=client", "--namespace", "voip",
                "-f", str(_values_file(tmp_path, VALUE_SETS["web-lab"])))
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "port-forward svc/rec-spanrec-web 8080:8080" in notes and "http://localhost:8080/" in notes
    assert "every restart of the pod signs everyone out" in notes


# -- keeping recordings: retention, write once, encryption, signatures ---------------

PROTECTION_ENV = ("SPANREC_RETENTION_DAYS", "SPANREC_RETENTION", "SPANREC_OBJECT_LOCK", "SPANREC_S3_SSE",
                  "SPANREC_ENCRYPTION_KEY_FILE", "SPANREC_SIGNING_KEY_FILE", "SPANREC_S3_SSE_C_KEY_FILE")


def _secret_files(pod: dict, container: dict) -> dict[str, tuple[str, str]]:
    """{mounted path: (Secret, key)} of every Secret item mounted in the container."""
    vols = {v["name"]: v for v in pod["volumes"]}
    out = {}
    for m in container["volumeMounts"]:
        secret = vols.get(m["name"], {}).get("secret", {})   # "state": a volumeClaimTemplate
        for item in secret.get("items", []):
            out[f"{m['mountPath']}/{item['path']}"] = (secret["secretName"], item["key"])
    return out


def test_protection_keys_retention_and_object_lock(tmp_path: Path) -> None:
    docs = render(tmp_path, VALUE_SETS["protection"])
    for doc in docs:            # strict Kubernetes schemas, as test_renders_valid_kubernetes
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # the controller
    pod = controller(docs)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = env_of(c)
    assert env["SPANREC_RETENTION_DAYS"] == {"name": "SPANREC_RETENTION_DAYS", "value": "2555"}
    assert env["SPANREC_RETENTION"]["value"] == RETENTION_JSON
    assert env["SPANREC_EXPIRE_EVERY_S"]["value"] == "900"
    assert env["SPANREC_OBJECT_LOCK"]["value"] == "compliance"
    assert env["SPANREC_S3_SSE"]["value"] == "c"
    assert env["SPANREC_ENCRYPTION_KEY_FILE"]["value"] == f"{KEYS_DIR}/kek.key"
    assert env["SPANREC_SIGNING_KEY_FILE"]["value"] == f"{KEYS_DIR}/signing.key"
    assert env["SPANREC_S3_SSE_C_KEY_FILE"]["value"] == f"{KEYS_DIR}/s3-sse-c.key"
    assert "SPANREC_VERIFY_KEY_FILE" not in env
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "keys"]
    assert mount == {"name": "keys", "mountPath": KEYS_DIR, "readOnly": True}
    (vol,) = [v for v in pod["volumes"] if v["name"] == "keys"]
    assert vol["secret"]["secretName"] == "spanrec-keys"
    assert vol["secret"]["defaultMode"] == 0o400 == 256
    assert vol["secret"]["items"] == [{"key": "kek.key", "path": "kek.key"},
                                      {"key": "signing.key", "path": "signing.key"},
                                      {"key": "s3-sse-c.key", "path": "s3-sse-c.key"}]
    files = _secret_files(pod, c)
    for name in ("SPANREC_ENCRYPTION_KEY_FILE", "SPANREC_SIGNING_KEY_FILE", "SPANREC_S3_SSE_C_KEY_FILE"):
        assert files[env[name]["value"]][0] == "spanrec-keys", name
    # the web player: decrypts, verifies, reads SSE-C objects; never the private signing key
    dep, _ = web_objects(docs)
    wpod = dep["spec"]["template"]["spec"]
    (w,) = wpod["containers"]
    args = w["args"]
    assert args[args.index("--encryption-key-file") + 1] == f"{KEYS_DIR}/kek.key"
    assert args[args.index("--verify-key-file") + 1] == f"{KEYS_DIR}/signing.pub"
    wenv = env_of(w)
    assert wenv["SPANREC_S3_SSE_C_KEY_FILE"]["value"] == f"{KEYS_DIR}/s3-sse-c.key"
    (wmount,) = [m for m in w["volumeMounts"] if m["name"] == "keys"]
    assert wmount == {"name": "keys", "mountPath": KEYS_DIR, "readOnly": True}
    (wvol,) = [v for v in wpod["volumes"] if v["name"] == "keys"]
    assert wvol["secret"] == {"secretName": "spanrec-keys", "defaultMode": 256, "items": [
        {"key": "kek.key", "path": "kek.key"}, {"key": "signing.pub", "path": "signing.pub"},
        {"key": "s3-sse-c.key", "path": "s3-sse-c.key"}]}
    wfiles = _secret_files(wpod, w)
    named = [a for a in args + [e.get("value", "") for e in w["env"]] if a.startswith(KEYS_DIR)]
    assert len(named) == 3 and set(named) <= set(wfiles)
    assert "signing.key" not in {key for _, key in wfiles.values()}
    assert not [k for k in wenv if k in PROTECTION_ENV and k != "SPANREC_S3_SSE_C_KEY_FILE"]


def test_protection_env_is_what_the_controller_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rendered names are cli/settings.py fields (pydantic-settings, prefix SPANREC_)
    and the values parse: the controller gets what the chart meant."""
    from cli.settings import ControllerSettings, load
    (c,) = controller(render(tmp_path, VALUE_SETS["protection"]))["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    fields = {"SPANREC_" + name.upper(): name for name in ControllerSettings.model_fields}
    for name in ("retention_days", "retention", "expire_every_s", "object_lock", "s3_sse",
                 "encryption_key_file", "signing_key_file"):
        assert "SPANREC_" + name.upper() in env, name
        assert name in ControllerSettings.model_fields, name
    for key in list(os.environ):
        if key.startswith("SPANREC_"):
            monkeypatch.delenv(key)
    for name, value in env.items():
        if name in fields:
            monkeypatch.setenv(name, value.replace("$(POD_NAME)", "rec-spanrec-0"))
    settings = load(ControllerSettings, "controller", None, {})
    assert settings.retention_days == 2555
    assert settings.retention == json.loads(RETENTION_JSON)
    policy = settings.retention_policy()
    assert policy.default_days == 2555 and [r.name for r in policy.rules] == ["trading"]
    assert settings.expire_every_s == 900.0
    assert settings.object_lock == "compliance" and settings.s3_sse == "c"
    assert settings.encryption_key_file == (Path(f"{KEYS_DIR}/kek.key"),)
    assert settings.signing_key_file == Path(f"{KEYS_DIR}/signing.key")
    # SPANREC_S3_SSE_C_KEY_FILE is read by the storage (every reader of the bucket), not a
    # settings field: a 0400 file like the mounted Secret item gives the key
    import base64

    import storage
    key = tmp_path / "s3-sse-c.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    key.chmod(0o400)
    assert env["SPANREC_S3_SSE_C_KEY_FILE"].endswith("/" + key.name)
    monkeypatch.setenv("SPANREC_S3_SSE_C_KEY_FILE", str(key))
    monkeypatch.delenv("SPANREC_S3_SSE_C_KEY", raising=False)
    assert len(storage._sse_c_keys()) == 1


def test_protection_web_args_parse_with_spanrec_web(tmp_path: Path) -> None:
    from cli.web import web_cmd
    (w,) = web_objects(render(tmp_path, VALUE_SETS["protection"]))[0]["spec"]["template"]["spec"]["containers"]
    p = web_cmd.make_context("web", list(w["args"])).params
    assert p["encryption_key_file"] == (f"{KEYS_DIR}/kek.key",)
    assert p["verify_key_file"] == (f"{KEYS_DIR}/signing.pub",)


def test_no_protection_by_default(tmp_path: Path) -> None:
    """Nothing is encrypted, signed, locked or expired by a rule unless asked: no keys
    volume, none of the settings (the expiry job's period only)."""
    for values in ({}, VALUE_SETS["web"]):
        docs = render(tmp_path, values)
        pods = [controller(docs)["spec"]["template"]["spec"]]
        if values:
            pods.append(web_objects(docs)[0]["spec"]["template"]["spec"])
        for pod in pods:
            assert "keys" not in {v["name"] for v in pod["volumes"]}
            (c,) = pod["containers"]
            assert "keys" not in {m["name"] for m in c["volumeMounts"]}
            env = env_of(c)
            assert not [k for k in env if k in PROTECTION_ENV]
            assert not [a for a in c.get("args", []) if a in ("--encryption-key-file", "--verify-key-file")]
            assert not [v for v in _strings(pod) if v.startswith(KEYS_DIR)]
        assert env_of(pods[0]["containers"][0])["SPANREC_EXPIRE_EVERY_S"]["value"] == "3600"


@pytest.mark.parametrize("protection, controller_items, web_items", [
    # a keys Secret without encryption or signatures (nor SSE-C) uses none of its files
    ({"keysSecret": "spanrec-keys", "encrypt": False, "sign": False}, None, None),
    ({"keysSecret": "spanrec-keys", "sign": False}, ["kek.key"], ["kek.key"]),
    ({"keysSecret": "spanrec-keys", "encrypt": False}, ["signing.key"], ["signing.pub"]),
    ({"keysSecret": "spanrec-keys", "encrypt": False, "sign": False, "s3Sse": "c"},
     ["s3-sse-c.key"], ["s3-sse-c.key"]),
    # SSE-S3 and the lock need no key; encrypt/sign without keysSecret: nothing to do
    ({"s3Sse": "s3", "objectLock": "governance", "encrypt": True, "sign": True}, None, None),
])
def test_protection_mounts_only_the_files_in_use(tmp_path: Path, protection: dict,
                                                 controller_items: list[str] | None,
                                                 web_items: list[str] | None) -> None:
    values = {**VALUE_SETS["protection"], "protection": protection}
    docs = render(tmp_path, values)
    ctl = controller(docs)["spec"]["template"]["spec"]
    web = web_objects(docs)[0]["spec"]["template"]["spec"]
    for pod, items in ((ctl, controller_items), (web, web_items)):
        (c,) = pod["containers"]
        vols = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["name"] for m in c["volumeMounts"]}
        if items is None:
            assert "keys" not in vols and "keys" not in mounts
        else:
            assert [i["key"] for i in vols["keys"]["secret"]["items"]] == items
            assert "keys" in mounts
        named = {v for v in _strings(c) if v.startswith(KEYS_DIR + "/")}
        assert named == {f"{KEYS_DIR}/{i}" for i in items or []}
    env = env_of(ctl["containers"][0])
    assert env.get("SPANREC_S3_SSE", {}).get("value", "") == protection.get("s3Sse", "")
    assert env.get("SPANREC_OBJECT_LOCK", {}).get("value", "") == protection.get("objectLock", "")
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
