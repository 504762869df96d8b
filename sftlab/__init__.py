"""sftlab: supervised fine-tuning experiments at scale (profile, train, evaluate, dissect, report)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sftlab")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
