"""The Helm chart (charts/sftlab), rendered and linted with the Helm v4 SDK (``helm_python``, no
cluster, no binary), every manifest validated against the Kubernetes OpenAPI schemas
(``kubernetes_validate``, strict), CRDs checked structurally, and the security properties asserted.

Values files are the chart's own ``ci/*-values.yaml`` (Helm's convention): default (bundled
PostgreSQL + MinIO), external (DSN and S3 keys from Secrets, Ingress, basic auth) and GPU.
"""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from tests.support.helpers import REPO

CHART = REPO / "charts" / "sftlab"
VALUES = {p.name.removesuffix("-values.yaml"): p for p in sorted((CHART / "ci").glob("*-values.yaml"))}
RELEASE, NAMESPACE = "sftlab", "ml-team"
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())  # the oldest the chart supports, the newest
CRD_KINDS = {"ServingRuntime"}
POD_KINDS = {"Deployment", "StatefulSet", "Job", "Pod"}
CREDENTIAL_ENV = re.compile(r"(PASSWORD|SECRET|ACCESS_KEY|BACKEND_STORE_URI|TOKEN)")


def values(kind: str) -> dict[str, Any]:
    return yaml.safe_load(VALUES[kind].read_text()) or {}


def render(vals: dict[str, Any]) -> dict[str, str]:
    return helm_python.Chart.load(CHART).render(vals, name=RELEASE, namespace=NAMESPACE)


def manifests(vals: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        doc
        for path, text in render(vals).items()
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def find(docs: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(matches) == 1, [d["metadata"]["name"] for d in docs if d["kind"] == kind]
    return matches[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]


def env_of(doc: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod_spec(doc)["containers"][0].get("env", [])}


@pytest.fixture(scope="module", params=sorted(VALUES))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, manifests(values(request.param))


def test_values_files_exist() -> None:
    assert {"default", "external", "gpu"} <= set(VALUES)


@pytest.mark.parametrize("kind", sorted(VALUES))
def test_lint_clean(kind: str) -> None:
    result = helm_python.lint(CHART, values(kind), strict=True, namespace=NAMESPACE)
    assert result["errors"] == [], result
    # severity 1 is INFO (e.g. "icon is recommended"); nothing at WARNING (2) or ERROR (4)
    assert [m for m in result["messages"] if m["severity"] > 1] == [], result["messages"]


def test_every_manifest_validates(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    kind_of_values, docs = rendered
    skipped = set()
    for doc in docs:
        assert doc["metadata"].get("namespace", NAMESPACE) == NAMESPACE or doc["kind"] == "PriorityClass"
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                skipped.add(doc["kind"])
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{kind_of_values}: {doc['kind']}/{doc['metadata']['name']} on {version}: {error}")
    assert skipped <= CRD_KINDS, skipped  # only CRDs lack a schema; they are checked below
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job", "Pod"} <= kinds


def test_security_properties(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    kind_of_values, docs = rendered
    for doc in (d for d in docs if d["kind"] in POD_KINDS):
        where = f"{kind_of_values}: {doc['kind']}/{doc['metadata']['name']}"
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] > 0, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        # No pod here talks to the API server, so none gets a token (the pipeline pods do, via KFP).
        assert spec["automountServiceAccountToken"] is False, where
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc.get("privileged"), where
            image = container["image"]
            assert re.search(r":[\w][\w.-]*$", image) and not image.endswith(":latest"), (where, image)
            assert container["resources"]["requests"], where
            for env in container.get("env", []):
                if CREDENTIAL_ENV.search(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], (where, env)


def test_rbac_is_namespaced(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    kind_of_values, docs = rendered
    assert not {d["kind"] for d in docs} & {"ClusterRole", "ClusterRoleBinding"}
    role = find(docs, "Role", "-pipeline")
    assert role["metadata"]["namespace"] == NAMESPACE
    rules = {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    lifecycle = {"create", "get", "list", "watch", "delete"}
    assert lifecycle <= rules[("serving.kserve.io", "inferenceservices")]
    assert lifecycle <= rules[("trainer.kubeflow.org", "trainjobs")]
    assert lifecycle <= rules[("kubeflow.org", "pytorchjobs")]
    for (group, resource), verbs in rules.items():
        assert "*" not in verbs and resource != "*" and group != "*", (group, resource)
        assert resource not in {"secrets", "roles", "rolebindings"}, resource
        if group == "" and resource != "serviceaccounts/token":
            assert verbs <= {"get", "list", "watch"}, (resource, verbs)
    binding = find(docs, "RoleBinding", "-pipeline")
    # Multi-user KFP: each bound ServiceAccount may mint tokens for itself, and for no other account.
    (token_rule,) = [r for r in role["rules"] if "serviceaccounts/token" in r["resources"]]
    assert token_rule["verbs"] == ["create"] and token_rule["resources"] == ["serviceaccounts/token"]
    assert sorted(token_rule["resourceNames"]) == sorted(s["name"] for s in binding["subjects"])
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] and all(
        s["kind"] == "ServiceAccount" and s["namespace"] == NAMESPACE for s in binding["subjects"]
    )
    assert f"{RELEASE}-pipeline" in {s["name"] for s in binding["subjects"]}


def test_trainer_access_can_be_dropped() -> None:
    role = find(manifests({"pipelineRuntime": {"kubeflowTrainer": {"enabled": False}}}), "Role", "-pipeline")
    groups = {g for rule in role["rules"] for g in rule["apiGroups"]}
    assert "serving.kserve.io" in groups and not groups & {"trainer.kubeflow.org", "kubeflow.org"}


def test_no_credentials_in_values_or_output() -> None:
    defaults = (CHART / "values.yaml").read_text()
    for line in defaults.splitlines():
        key, _, value = line.split("#", 1)[0].partition(":")
        if re.search(r"(password|secretkey|accesskey|token)$", key.strip(), re.I):
            assert value.strip() in {"", '""'}, line
    # External: the chart creates no Secret at all; credentials are only referenced.
    external = manifests(values("external"))
    assert not [d for d in external if d["kind"] == "Secret"]
    refs = {
        (v["secretKeyRef"]["name"], v["secretKeyRef"]["key"])
        for d in external
        if d["kind"] in POD_KINDS
        for v in env_of(d).values()
        if isinstance(v, dict)
    }
    assert {
        ("mlflow-db", "dsn"),
        ("mlflow-s3", "access-key-id"),
        ("mlflow-s3", "secret-access-key"),
        ("mlflow-admin", "admin-password"),
    } <= refs
    # Default: the bundled stores' Secrets are generated per install (random, kept across upgrades
    # and on uninstall), never a fixed default that every install would share.
    first, second = manifests({}), manifests({})
    for suffix in ("-postgresql", "-minio"):
        a, b = find(first, "Secret", suffix), find(second, "Secret", suffix)
        assert a["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert a["data"] != b["data"], suffix
    # existingSecret: no generated Secret, references go to the named one.
    own = {
        "postgresql": {"existingSecret": "pg-creds"},
        "artifacts": {"minio": {"existingSecret": "minio-creds"}},
        "pipelineRuntime": {"predictor": {"existingSecret": "kserve-s3"}},
    }
    docs = manifests(own)
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert find(docs, "ServiceAccount", "-predictor")["secrets"] == [{"name": "kserve-s3"}]
    assert env_of(find(docs, "Deployment", "-mlflow"))["MLFLOW_DB_PASSWORD"]["secretKeyRef"]["name"] == "pg-creds"
    assert env_of(find(docs, "StatefulSet", "-minio"))["MINIO_ROOT_USER"]["secretKeyRef"]["name"] == "minio-creds"


def test_predictors_get_a_storage_only_account_with_kserve_format_credentials() -> None:
    """KServe's storage initializer reads S3 keys only from Secrets on the predictor's
    ServiceAccount, under its own key names and annotations (pkg/credentials/s3/s3_secret.go)."""
    import base64

    docs = manifests({"pipelineRuntime": {"predictor": {"hubTokenSecret": "hf-token"}}})
    account = find(docs, "ServiceAccount", "-predictor")
    name = account["metadata"]["name"]
    assert account["secrets"] == [{"name": f"{name}-s3"}, {"name": "hf-token"}]
    assert account["automountServiceAccountToken"] is False
    s3, minio = find(docs, "Secret", "-predictor-s3"), find(docs, "Secret", "-minio")
    assert s3["data"] == {
        "awsAccessKeyID": minio["data"]["root-user"],
        "awsSecretAccessKey": minio["data"]["root-password"],
    }
    assert base64.b64decode(s3["data"]["awsAccessKeyID"]).startswith(b"sftlab-")
    minio_service = find(docs, "Service", "-minio")["metadata"]["name"]
    assert s3["metadata"]["annotations"] == {
        "serving.kserve.io/s3-endpoint": f"{minio_service}.{NAMESPACE}.svc:9000",
        "serving.kserve.io/s3-usehttps": "0",
        "serving.kserve.io/s3-region": "us-east-1",
    }
    # Least privilege: no Role binds it, and pipelines hand it to every InferenceService they create.
    bound = {s["name"] for d in docs if d["kind"] == "RoleBinding" for s in d["subjects"]}
    assert name not in bound
    assert find(docs, "ConfigMap", "-defaults")["data"]["SFTLAB_SERVICE_ACCOUNT"] == name
    with pytest.raises(Exception, match=r"pipelineRuntime.predictor.existingSecret: required"):
        manifests({"artifacts": {"minio": {"existingSecret": "minio-creds"}}})


def test_default_install_mlflow_with_bundled_stores() -> None:
    docs = manifests(values("default"))
    deployment = find(docs, "Deployment", "-mlflow")
    container = pod_spec(deployment)["containers"][0]
    assert container["image"] == "ghcr.io/sftlab/sftlab-mlflow:0.1.0" and container["args"] == ["server"]
    env = env_of(deployment)
    assert env["MLFLOW_DB_HOST"] == f"{RELEASE}-postgresql" and "MLFLOW_BACKEND_STORE_URI" not in env
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://mlflow/mlflow"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == f"http://{RELEASE}-minio.{NAMESPACE}.svc:9000"
    assert env["AWS_ACCESS_KEY_ID"]["secretKeyRef"] == {"name": f"{RELEASE}-minio", "key": "root-user"}
    assert env["MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD"] == "true"
    assert int(env["MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE"]) == 100 * 2**20
    assert int(env["MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE"]) == 500 * 2**20
    hosts = env["MLFLOW_ALLOWED_HOSTS"].split(",")
    assert f"{RELEASE}-mlflow.{NAMESPACE}.*" in hosts and "10.*" in hosts and "*" not in hosts
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
    service = find(docs, "Service", "-mlflow")
    assert (
        service["spec"]["ports"][0]["port"] == 5000
        and service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    )
    assert not [d for d in docs if d["kind"] == "Ingress"]
    # Bundled PostgreSQL and MinIO, each with a PVC template and a password from its Secret.
    postgres = find(docs, "StatefulSet", "-postgresql")
    assert env_of(postgres)["POSTGRES_PASSWORD"]["secretKeyRef"]["name"] == f"{RELEASE}-postgresql"
    assert postgres["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert re.fullmatch(r".+:\d+\.\d+-\w+", pod_spec(postgres)["containers"][0]["image"])
    find(docs, "StatefulSet", "-minio")
    # Hooks: migrations before upgrades (a bundled DB does not exist before the first install);
    # the bucket after install/upgrade, by the MLflow image's entrypoint.
    migrate = find(docs, "Job", "-migrate")
    assert migrate["metadata"]["annotations"]["helm.sh/hook"] == "pre-upgrade"
    assert pod_spec(migrate)["containers"][0]["args"] == ["migrate"]
    assert env_of(migrate)["MLFLOW_DB_PASSWORD"] == env["MLFLOW_DB_PASSWORD"]
    bucket = find(docs, "Job", "-bucket")
    assert bucket["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert pod_spec(bucket)["containers"][0]["args"] == ["ensure-bucket"]
    # Cluster defaults for pipeline pods: one registry and tag for every image.
    defaults = find(docs, "ConfigMap", "-defaults")["data"]
    assert defaults["MLFLOW_TRACKING_URI"] == f"http://{RELEASE}-mlflow.{NAMESPACE}.svc:5000"
    assert defaults["MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD"] == "true"
    assert defaults["SFTLAB_STORE_S3_ENDPOINT"] == env["MLFLOW_S3_ENDPOINT_URL"]
    assert defaults["SFTLAB_STORE_BUCKET"] == "mlflow"
    assert "AWS_ENDPOINT_URL_S3" not in defaults  # boto3 would send every bucket to the bundled store
    assert defaults["SFTLAB_IMAGE"] == "ghcr.io/sftlab/sftlab-train:0.1.0"
    assert defaults["SFTLAB_BASE_IMAGE"] == "ghcr.io/sftlab/sftlab:0.1.0"
    assert defaults["SFTLAB_SERVING_RUNTIME"] == "sftlab-eval"
    assert not any(CREDENTIAL_ENV.search(k) for k in defaults)


def test_external_database_and_s3() -> None:
    docs = manifests(values("external"))
    assert not [d for d in docs if d["metadata"]["name"].endswith(("-postgresql", "-minio", "-bucket"))]
    deployment = find(docs, "Deployment", "-mlflow")
    env = env_of(deployment)
    assert env["MLFLOW_BACKEND_STORE_URI"]["secretKeyRef"] == {"name": "mlflow-db", "key": "dsn"}
    assert not any(k.startswith("MLFLOW_DB_") for k in env)
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://ml-artifacts/sftlab/mlflow"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "https://s3.eu-central-1.amazonaws.com"
    assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"] == {"name": "mlflow-s3", "key": "secret-access-key"}
    assert env["MLFLOW_BASIC_AUTH"] == "true"
    assert json.loads(env["MLFLOW_EXTRA_ARGS_JSON"]) == ["--uvicorn-opts", "--timeout-keep-alive 120"]
    assert env["MLFLOW_WORKERS"] == "4" and deployment["spec"]["replicas"] == 2
    assert {"mlflow.example.com", "mlflow.internal.example.com"} <= set(env["MLFLOW_ALLOWED_HOSTS"].split(","))
    assert pod_spec(deployment)["containers"][0]["image"] == "registry.example.com/ml/sftlab-mlflow:0.1.0"
    assert pod_spec(deployment)["imagePullSecrets"] == [{"name": "registry-example"}]
    # An external database exists before install, so migrations also run pre-install.
    migrate = find(docs, "Job", "-migrate")
    assert migrate["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert env_of(migrate)["MLFLOW_BACKEND_STORE_URI"] == env["MLFLOW_BACKEND_STORE_URI"]
    # A pre-install hook runs before the chart's own Secrets exist: with an external database and
    # the bundled MinIO it must not wait on MinIO's Secret (it needs the database alone).
    mixed = manifests({**values("external"), "artifacts": {"minio": {"enabled": True}}})
    hook = find(mixed, "Job", "-migrate")
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    referenced = {v["secretKeyRef"]["name"] for v in env_of(hook).values() if isinstance(v, dict)}
    assert referenced == {"mlflow-db"}
    ingress = find(docs, "Ingress", "-mlflow")
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "mlflow.example.com" and ingress["spec"]["tls"][0]["secretName"] == "mlflow-tls"
    assert rule["http"]["paths"][0]["backend"]["service"] == {"name": f"{RELEASE}-mlflow", "port": {"name": "http"}}
    defaults = find(docs, "ConfigMap", "-defaults")["data"]
    assert defaults["SFTLAB_STORE_S3_ENDPOINT"] == "https://s3.eu-central-1.amazonaws.com"
    assert defaults["SFTLAB_REGISTRY"] == "registry.example.com/ml"


def serving_runtime(docs: list[dict[str, Any]]) -> dict[str, Any]:
    runtime = find(docs, "ServingRuntime")
    # Structural checks in place of a CRD schema (serving.kserve.io/v1alpha1 ServingRuntimeSpec).
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert runtime["metadata"]["namespace"] == NAMESPACE
    spec = runtime["spec"]
    assert set(spec) <= {
        "supportedModelFormats",
        "protocolVersions",
        "containers",
        "nodeSelector",
        "tolerations",
        "imagePullSecrets",
        "affinity",
        "volumes",
        "multiModel",
        "disabled",
    }, set(spec)
    assert spec["supportedModelFormats"] == [{"name": "sftlab-causal-lm", "version": "1", "autoSelect": False}]
    assert set(spec["protocolVersions"]) <= {"v1", "v2", "grpc-v1", "grpc-v2"}
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"  # the name KServe merges predictor settings into
    assert container["args"] == ["--name", "{{.Name}}"]  # KServe's template, not Helm's
    assert container["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    sc = container["securityContext"]
    assert (
        sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    )
    # The container part is a core Container: validate it as one inside a Pod.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime"}, "spec": {"containers": [container]}}
    kubernetes_validate.validate(pod, K8S_VERSIONS[-1], strict=True)
    return runtime


def test_serving_runtime_default() -> None:
    docs = manifests(values("default"))
    runtime = serving_runtime(docs)
    container = runtime["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/sftlab/sftlab-serve:0.1.0"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nodeSelector" not in runtime["spec"]
    off = manifests({"pipelineRuntime": {"servingRuntime": {"enabled": False}}})
    assert not [d for d in off if d["kind"] == "ServingRuntime"]
    assert find(off, "ConfigMap", "-defaults")["data"]["SFTLAB_SERVING_RUNTIME"] == ""


def test_gpu_values() -> None:
    gpu = values("gpu")["gpu"]
    docs = manifests(values("gpu"))
    runtime = serving_runtime(docs)
    container = runtime["spec"]["containers"][0]
    assert (
        container["resources"]["requests"]["nvidia.com/gpu"]
        == container["resources"]["limits"]["nvidia.com/gpu"]
        == "1"
    )
    assert container["resources"]["requests"]["memory"] == "64Gi"
    assert runtime["spec"]["nodeSelector"] == gpu["nodeSelector"]
    assert runtime["spec"]["tolerations"] == gpu["tolerations"]
    classes = {d["metadata"]["name"]: d["value"] for d in docs if d["kind"] == "PriorityClass"}
    assert classes == {"sftlab-training": 1000, "sftlab-evaluation": 2000}
    defaults = find(docs, "ConfigMap", "-defaults")["data"]
    assert defaults["SFTLAB_GPU_RESOURCE"] == "nvidia.com/gpu"
    assert json.loads(defaults["SFTLAB_GPU_NODE_SELECTOR"]) == gpu["nodeSelector"]
    assert json.loads(defaults["SFTLAB_GPU_TOLERATIONS"]) == gpu["tolerations"]
    assert defaults["SFTLAB_GPU_RUNTIME_CLASS"] == "nvidia"
    assert (defaults["SFTLAB_TRAIN_PRIORITY_CLASS"], defaults["SFTLAB_EVAL_PRIORITY_CLASS"]) == (
        "sftlab-training",
        "sftlab-evaluation",
    )
    binding = find(docs, "RoleBinding", "-pipeline")
    assert {s["name"] for s in binding["subjects"]} == {f"{RELEASE}-pipeline", "default-editor"}
    # Another vendor's resource name flows to the runtime as is.
    amd = serving_runtime(manifests({"gpu": {"resourceName": "amd.com/gpu"}}))
    assert amd["spec"]["containers"][0]["resources"]["limits"]["amd.com/gpu"] == "1"
    cpu = serving_runtime(manifests({"pipelineRuntime": {"servingRuntime": {"resources": {"gpus": 0}}}}))
    assert "nvidia.com/gpu" not in cpu["spec"]["containers"][0]["resources"]["limits"]


def test_helm_test_hook_checks_mlflow_health() -> None:
    docs = manifests({})
    pod = find(docs, "Pod", "-test-health")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][-1]
    assert f'url = "http://{RELEASE}-mlflow.{NAMESPACE}.svc:5000/health"' in script
    compile(script, "helm-test", "exec")  # the inline check is valid Python
    assert not [d for d in manifests({"tests": {"enabled": False}}) if d["kind"] == "Pod"]


def test_notes_explain_access_and_pipeline_upload() -> None:
    notes = render({})["sftlab/templates/NOTES.txt"]
    assert f"kubectl -n {NAMESPACE} port-forward svc/{RELEASE}-mlflow 5000:5000" in notes
    assert "pipelines/sweep_pipeline.yaml" in notes and "s3://" in notes
    assert f"http://{RELEASE}-mlflow.{NAMESPACE}.svc:5000" in notes
    external = render(values("external"))["sftlab/templates/NOTES.txt"]
    assert "https://mlflow.example.com" in external and "MLFLOW_TRACKING_PASSWORD" in external


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"postgresql": {"enabled": False}}, "/externalDatabase/existingSecret"),
        ({"postgresql": {"password": "hunter2"}}, "additional properties 'password' not allowed"),
        ({"mlflow": {"workers": 0}}, "/mlflow/workers"),
        ({"image": {"tag": "latest"}}, "/image/tag"),
        ({"gpu": {"resourceName": "gpu"}}, "/gpu/resourceName"),
        ({"mlflow": {"multipartUpload": {"chunkSizeBytes": 1024}}}, "/mlflow/multipartUpload/chunkSizeBytes"),
        ({"mlflow": {"basicAuth": {"enabled": True}}}, "/mlflow/basicAuth/existingSecret"),
    ],
)
def test_schema_rejects_bad_values(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as error:
        render(bad)
    assert "don't meet the specifications of the schema" in str(error.value)
    assert message in str(error.value), str(error.value)


def test_schema_is_strict_json_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    top = set(yaml.safe_load((CHART / "values.yaml").read_text()))
    # Every value is described, nothing undocumented; and `global`, which Helm passes to a chart
    # used as a subchart, is allowed (a strict schema without it fails every parent chart).
    assert top | {"global"} == set(schema["properties"])
    parent = manifests({"global": {"imageRegistry": "registry.example.com"}})
    assert find(parent, "ConfigMap", "-defaults")


def test_pipeline_tasks_read_the_charts_defaults_config_map() -> None:
    """Every compiled pipeline task takes its cluster defaults from the ConfigMap this chart renders."""
    from sftlab.kfp.pipelines.trial import CLUSTER_DEFAULTS

    config_map = find(manifests(values("default")), "ConfigMap", "-defaults")
    assert config_map["metadata"]["name"] == "sftlab-defaults"
    # The name pipelines look for, whatever the release is called.
    other = find(manifests({"fullnameOverride": "team-a-platform"}), "ConfigMap", "-defaults")
    assert other["metadata"]["name"] == "sftlab-defaults"
    # Every key rendered in every install, empty where unset (KFP's optional env skips only a missing map).
    sparse = manifests({**values("external"), "pipelineRuntime": {"servingRuntime": {"enabled": False}}})
    assert set(find(sparse, "ConfigMap", "-defaults")["data"]) == set(config_map["data"])
    assert set(CLUSTER_DEFAULTS) <= set(config_map["data"])
    for compiled in ("trial_pipeline.yaml", "sweep_pipeline.yaml"):
        docs = list(yaml.safe_load_all((REPO / "pipelines" / compiled).read_text()))
        executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        components = docs[0]["deploymentSpec"]["executors"]
        assert set(executors) == set(components), compiled
        for name, executor in executors.items():
            (entry,) = executor["configMapAsEnv"]
            assert entry["configMapName"] == "sftlab-defaults" and entry["optional"] is True, (compiled, name)
            assert {e["configMapKey"] for e in entry["keyToEnv"]} == set(CLUSTER_DEFAULTS)
