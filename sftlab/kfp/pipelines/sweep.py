"""The sweep pipeline: ``plan -> launch -> report`` for a whole spec, run on a cluster.

Its one parameter is the spec (YAML text, or an ``s3://`` URI for specs over KFP's
10,000-character parameter cap). ``launch`` runs each trial as a separate KFP run of the trial
pipeline, compiled from the spec given at run time, so trial resources follow that spec.
"""

from kfp import dsl, kubernetes
from kfp.dsl.base_component import BaseComponent

from sftlab.cluster.objects import POD_NAMESPACE_ENV
from sftlab.kfp.auth import POD_SERVICE_ACCOUNT_ENV
from sftlab.kfp.components import image_for
from sftlab.kfp.components.sweep import sweep_components
from sftlab.kfp.pipelines.trial import (
    RETRIES,
    RETRY_BACKOFF,
    pull_secret_names,
    use_cluster_defaults,
    use_pull_secrets,
    use_secrets,
)
from sftlab.spec.schema import PipelineConfig, Spec

SWEEP_PIPELINE = "sftlab-sweep"
STEP_CPU, STEP_MEMORY, STEP_MEMORY_LIMIT = "250m", "1Gi", "2Gi"


def build_sweep_pipeline(spec: Spec | None = None) -> BaseComponent:
    """The sweep pipeline on ``spec``'s image, with its secrets (release image, none, if None).

    The steps are light (a controller polling KFP), so the spec's stage resources do not apply.
    """
    components = sweep_components(image_for(spec))
    secrets = spec.resources.secrets if spec is not None else []
    defaults = (spec.pipeline if spec is not None else PipelineConfig()).defaults_config_map
    pull_secrets = pull_secret_names(spec)

    @dsl.pipeline(name=SWEEP_PIPELINE)
    def sweep_pipeline(spec: str):
        """An sftlab sweep: plan the trials, run each as its own trial-pipeline run, report.

        Args:
            spec: The experiment spec: its YAML text, or the s3:// URI of a spec file (for specs
                over 10,000 characters). Trials already finished in MLflow are skipped, so
                resubmitting a spec resumes it.
        """
        plan = components.plan(spec=spec)
        launch = components.launch(spec=spec, plan=plan.outputs["trials"])
        report = components.report(plan=plan.outputs["trials"], failed=launch.outputs["Output"])
        for task in (plan, launch, report):
            task.set_caching_options(False)  # each step reads or writes MLflow state
            # Light controllers (KFP and MLflow clients), but never scheduled without requests or
            # evicted first. A retried launch step skips the trials already finished; those that
            # were in flight when its pod was lost run again.
            task.set_cpu_request(STEP_CPU).set_memory_request(STEP_MEMORY).set_memory_limit(STEP_MEMORY_LIMIT)
            task.set_retry(num_retries=RETRIES, backoff_duration=RETRY_BACKOFF, backoff_factor=2)
            use_secrets(task, secrets)
            use_cluster_defaults(task, defaults)
            use_pull_secrets(task, pull_secrets)
        # Who the launch step is, for the KFP API of a multi-user install (sftlab.kfp.auth).
        kubernetes.use_field_path_as_env(launch, env_name=POD_NAMESPACE_ENV, field_path="metadata.namespace")
        kubernetes.use_field_path_as_env(launch, env_name=POD_SERVICE_ACCOUNT_ENV, field_path="spec.serviceAccountName")

    return sweep_pipeline
