"""The trial pipeline: one trial's stages, ``profile`` and ``baseline``, ``train`` (after
``profile``), then ``evaluate(model, baseline)`` and ``weights(model)``.

Its one parameter is the trial's ``TrialJob`` JSON (a few KB, well under KFP's 10,000-character
cap). Pod settings (CPU, memory, GPUs, node selector, tolerations, secrets) come from the spec's
``resources`` at compile time; locally, ``kfp.local`` ignores them.
"""

from kfp import dsl, kubernetes
from kfp.dsl import PipelineTask
from kfp.dsl.base_component import BaseComponent
from kfp.dsl.pipeline_channel import PipelineChannel

from sftlab.cluster.defaults import ClusterDefaults
from sftlab.kfp.components import image_for
from sftlab.kfp.components.stages import stage_components
from sftlab.spec.job import CACHE_MOUNT, cache_env
from sftlab.spec.schema import PipelineConfig, ResourcesConfig, SecretEnv, Spec, TaskResources

TRIAL_PIPELINE = "sftlab-trial"


def use_secrets(task: PipelineTask, secrets: list[SecretEnv]) -> None:
    """Expose the spec's Kubernetes Secrets to a task as environment variables."""
    for secret in secrets:
        for env, key in secret.env.items():  # one call per variable: two variables may share a key
            kubernetes.use_secret_as_env(task, secret_name=secret.secret, secret_key_to_env={key: env})


# Keys of the Helm chart's defaults ConfigMap that stages read (tracking server, S3 endpoint, uploads).
CLUSTER_DEFAULTS = (
    "MLFLOW_TRACKING_URI",
    "SFTLAB_STORE_S3_ENDPOINT",  # the platform store's endpoint, for s3:// URIs in its bucket only
    "SFTLAB_STORE_BUCKET",
    "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD",
    "MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE",
    "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE",
    "SFTLAB_ARTIFACTS_DESTINATION",  # where KServe reads trained models (evaluation.backend: kserve)
    "SFTLAB_SERVICE_ACCOUNT",  # the service account InferenceServices download with
    "SFTLAB_SERVING_RUNTIME",  # the chart's ServingRuntime (evaluation.kserve.runtime sftlab)
    # What the pods a stage creates get (sftlab.cluster.defaults): pull secrets, GPU placement, priority.
    "SFTLAB_IMAGE_PULL_REFS",
    "SFTLAB_GPU_NODE_SELECTOR",
    "SFTLAB_GPU_TOLERATIONS",
    "SFTLAB_GPU_RUNTIME_CLASS",
    "SFTLAB_TRAIN_PRIORITY_CLASS",
    "SFTLAB_EVAL_PRIORITY_CLASS",
    "SFTLAB_IMAGE",  # the training image multi-node TrainJob/PyTorchJob pods run
)


def pull_secret_names(spec: Spec | None) -> list[str]:
    """The spec's image pull secrets; inside the cluster (the launch step compiling trial runs),
    the chart's when the spec names none; none for the committed pipelines (no spec)."""
    if spec is None:
        return []
    return list(spec.pipeline.image_pull_secrets) or ClusterDefaults.from_env().image_pull_secrets


def use_pull_secrets(task: PipelineTask, names: list[str]) -> None:
    if names:
        kubernetes.set_image_pull_secrets(task, names)


def use_cluster_defaults(task: PipelineTask, config_map: str | None) -> None:
    """Cluster defaults as env (optional: a cluster without the chart's ConfigMap still runs)."""
    if config_map:
        keys = {key: key for key in CLUSTER_DEFAULTS}
        kubernetes.use_config_map_as_env(task, config_map_name=config_map, config_map_key_to_env=keys, optional=True)


def use_model_cache(task: PipelineTask, pvc: str | None) -> None:
    """Hub, S3 and tiny-model downloads go to a shared PVC instead of each pod's ephemeral disk."""
    if pvc:
        kubernetes.mount_pvc(task, pvc_name=pvc, mount_path=CACHE_MOUNT)
        for name, value in cache_env().items():
            task.set_env_variable(name, value)


# What a stage's pod requests when the spec sets nothing (a scheduler places a pod with no
# requests anywhere, and evicts it first), and the retries a stage gets: stages resume from their
# checkpoints and claims, so a pod lost to a node failure or an eviction costs a restart, not a trial.
DEFAULT_CPU, DEFAULT_MEMORY = "1", "4Gi"
RETRIES, RETRY_BACKOFF = 2, "60s"


def configure(
    task: PipelineTask, resources: TaskResources, secrets: list[SecretEnv], retries: bool = True
) -> PipelineTask:
    """Apply one stage's pod settings.

    Caching is off: every stage writes to the trial's MLflow run, so a cache hit would skip that.
    """
    task.set_caching_options(False)
    if retries:
        task.set_retry(num_retries=RETRIES, backoff_duration=RETRY_BACKOFF, backoff_factor=2)
    if resources.cpu:
        task.set_cpu_request(resources.cpu).set_cpu_limit(resources.cpu)
    else:
        task.set_cpu_request(DEFAULT_CPU)
    if resources.memory:
        task.set_memory_request(resources.memory).set_memory_limit(resources.memory)
    else:
        task.set_memory_request(DEFAULT_MEMORY)
    if resources.gpus:
        task.set_accelerator_type(resources.accelerator).set_accelerator_limit(resources.gpus)
    for label, value in resources.node_selector.items():
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    for tol in resources.tolerations:
        kubernetes.add_toleration(task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect)
    if resources.shm_size:
        kubernetes.empty_dir_mount(
            task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=resources.shm_size
        )
    use_secrets(task, secrets)
    return task


def task_resources(spec: Spec | None, stage: str) -> TaskResources:
    """The pod settings of a stage's own task. Stages that start pods of their own (a multi-node
    TrainJob, InferenceServices) only orchestrate: the stage's resources go to those pods."""
    if spec is None:
        return TaskResources()
    resources = spec.resources
    delegated = (stage == "train" and spec.training.distributed.nodes > 1) or (
        stage in ("baseline", "evaluate") and spec.evaluation.backend == "kserve"
    )
    return resources.default if delegated else resources.for_stage(stage)


def build_trial_pipeline(spec: Spec | None = None, retries: bool = True) -> BaseComponent:
    """The trial pipeline for ``spec``'s image and resources (release image, no settings, if None).

    ``retries`` is for a cluster, where a stage's pod can be lost under it; kfp.local honours
    retry policies too, and there a failure is the stage's own and would only be repeated, minutes
    later, so local trials run without."""
    components = stage_components(image_for(spec))
    resources = spec.resources if spec is not None else ResourcesConfig()
    defaults = (spec.pipeline if spec is not None else PipelineConfig()).defaults_config_map
    pull_secrets = pull_secret_names(spec)

    @dsl.pipeline(name=TRIAL_PIPELINE)
    def trial_pipeline(job: str):
        """One sftlab trial: profile, baseline, train, evaluate, weights.

        Args:
            job: The trial as TrialJob JSON (its settings plus the MLflow tracking context), as
                written by the sweep's launcher.
        """

        def stage(name: str, **inputs: PipelineChannel) -> PipelineTask:
            component = getattr(components, name)
            ids = {"kfp_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER, "kfp_task": dsl.PIPELINE_TASK_NAME_PLACEHOLDER}
            task = component(job=job, **ids, **inputs)
            use_cluster_defaults(task, defaults)
            use_pull_secrets(task, pull_secrets)
            use_model_cache(task, resources.model_cache_pvc)
            return configure(task, task_resources(spec, name), resources.secrets, retries)

        profile = stage("profile")
        baseline = stage("baseline")
        train = stage("train").after(profile)  # bad data fails in the cheap stage, before a training pod starts
        stage("evaluate", model=train.outputs["model"], baseline=baseline.outputs["result"])
        stage("weights", model=train.outputs["model"])

    return trial_pipeline
