"""Where a URI becomes local files: models, training data, tiny models, GGUF checkpoints, S3 objects and specs."""
