"""The Kubeflow Pipelines layer: components and pipelines that call sftlab inside the project image.

The only part of sftlab that imports ``kfp`` (an import-linter contract in pyproject.toml holds it).
"""
