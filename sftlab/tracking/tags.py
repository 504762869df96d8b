"""The tags sftlab writes on MLflow runs: how stages, caches, claims and the report find runs again."""

TAG_STAGE = "sftlab.stage"
TAG_TRIAL_KEY = "sftlab.trial_key"
TAG_CACHE_KEY = "sftlab.cache_key"
TAG_SWEEP_KEY = "sftlab.sweep_key"
TAG_ERROR = "sftlab.error"
TAG_PARENT = "mlflow.parentRunId"
TAG_HEARTBEAT = "sftlab.heartbeat"
