"""A local KServe model server that speaks the OpenAI completions wire format.

Evaluation talks to models through the OpenAI routes that the cluster's KServe Hugging Face
runtime serves, so the same client code runs locally and on the cluster. This module runs a real
``kserve.ModelServer`` with those routes added (``sftlab.serving.openai_api``) and binds loopback
only (kserve hard-codes ``0.0.0.0``).

Run: ``python -m sftlab.serving.server --model-dir DIR [--adapter-dir DIR] --name NAME --port PORT``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import logging
import sys
from typing import Any

import kserve
from kserve import model_server as kserve_model_server
from kserve.logging import KSERVE_LOG_CONFIG, configure_logging
from kserve.protocol.rest.server import RESTServer

from sftlab.serving.model import CausalLM
from sftlab.serving.openai_api import OpenAIRoutes

log = logging.getLogger(__name__)


class OpenAIRESTServer(RESTServer):
    """kserve's REST server, bound to ``host`` instead of the hard-coded 0.0.0.0, with the OpenAI
    routes added to kserve's own app (so /v1, /v2 and health routes keep working)."""

    def __init__(self, *args: Any, host: str, model: CausalLM, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.config.host = host
        self.routes = OpenAIRoutes(model)

    def create_application(self) -> None:
        super().create_application()
        self.routes.register(kserve_model_server.app)


def serve(model: CausalLM, host: str, port: int) -> None:
    """Run kserve's ModelServer (REST only, one worker) until SIGTERM/SIGINT."""
    # ModelServer.start builds its REST server from this module-level name.
    kserve_model_server.RESTServer = functools.partial(OpenAIRESTServer, host=host, model=model)
    kserve.ModelServer(http_port=port, enable_grpc=False, workers=1).start([model])


def _configure_logging() -> None:
    """kserve's logging, with uvicorn's access log moved from stdout to stderr."""
    config = copy.deepcopy(KSERVE_LOG_CONFIG)
    config["handlers"]["uvicorn_access"]["stream"] = "ext://sys.stderr"
    configure_logging(config)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sftlab.serving.server", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="Hugging Face model folder")
    parser.add_argument("--adapter-dir", help="PEFT LoRA adapter folder, merged into the model in memory")
    parser.add_argument("--name", required=True, help="model name clients send in the 'model' field")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    _configure_logging()
    model = CausalLM(args.name, args.model_dir, args.adapter_dir)
    try:
        model.load()
    except Exception as exc:  # noqa: BLE001 - torch/transformers/peft raise many types; any ends in one line
        log.error("cannot load model %s: %s", args.model_dir, " ".join(str(exc).split()))
        sys.exit(1)
    serve(model, args.host, args.port)


if __name__ == "__main__":
    main()
