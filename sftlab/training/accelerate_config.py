"""Accelerate launch configurations for in-pod multi-GPU training, generated from the spec.

``training.distributed.strategy`` picks accelerate's engine:

- ddp: ``MULTI_GPU`` data parallel (on a CPU-only machine, as many gloo processes: for tests).
- fsdp: FULL_SHARD, wrapped per transformer layer class of the model (its ``_no_split_modules``),
  full state dicts on save, so checkpoints and the final model are plain safetensors that any
  runtime (and the per-epoch evaluation) can load — at the price of gathering them on rank 0.
- deepspeed_zero3: ZeRO stage 3; ``zero3_save_16bit_model`` gathers 16-bit weights on save for the
  same reason. Batch size, accumulation and clipping stay ``auto``: the Trainer fills them in.

The train stage writes the YAML and re-launches the trial with ``launch_command``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from sftlab.errors import SftlabError
from sftlab.spec.schema import TrainingConfig

ENTRY_POINT = "sftlab.training.distributed"


def layer_classes(model_source: str, revision: str | None = None) -> list[str]:
    """The decoder-layer class names FSDP wraps, from the model's config (no weights are loaded)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = AutoConfig.from_pretrained(model_source, revision=revision)
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    names = list(getattr(model_class, "_no_split_modules", None) or [])
    if not names:
        raise SftlabError(
            f"{model_source}: no transformer layer class known for model type {config.model_type!r}; "
            "FSDP cannot wrap it"
        )
    return names


def accelerate_config(
    training: TrainingConfig, processes: int, *, cuda: bool, bf16: bool, layers: list[str] | None = None
) -> dict[str, Any]:
    """An accelerate config file's content (``accelerate config``'s YAML) for the spec's strategy."""
    strategy = training.distributed.strategy
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "num_machines": 1,
        "machine_rank": 0,
        "num_processes": processes,
        "main_process_port": 0,  # a free port: trials sharing a machine must not collide
        "mixed_precision": "bf16" if bf16 else "no",
        "use_cpu": not cuda,
        "debug": False,
    }
    if strategy == "ddp":
        config["distributed_type"] = "MULTI_GPU"
    elif strategy == "fsdp":
        if not layers:
            raise SftlabError("fsdp: the transformer layer classes to wrap are required")
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = {
            "fsdp_version": 1,
            "fsdp_sharding_strategy": "FULL_SHARD",
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": ",".join(layers),
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_backward_prefetch": "BACKWARD_PRE",
            "fsdp_forward_prefetch": False,
            "fsdp_use_orig_params": True,  # LoRA: frozen and trainable parameters share flat buffers
            "fsdp_sync_module_states": True,
            "fsdp_cpu_ram_efficient_loading": False,
            "fsdp_offload_params": False,
            "fsdp_activation_checkpointing": False,  # training.gradient_checkpointing does it
        }
    elif strategy == "deepspeed_zero3":
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {
            "zero_stage": 3,
            "zero3_init_flag": False,
            "zero3_save_16bit_model": True,
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
        }
    else:
        raise SftlabError(f"training.distributed.strategy: {strategy!r} is not launched through accelerate")
    return config


def write_accelerate_config(
    training: TrainingConfig, processes: int, path: Path, layers: list[str] | None = None
) -> Path:
    """Write the config for this machine (CUDA or not, bf16 or not) and return its path."""
    import torch

    cuda = torch.cuda.is_available()
    config = accelerate_config(
        training, processes, cuda=cuda, bf16=cuda and torch.cuda.is_bf16_supported(), layers=layers
    )
    path.write_text(yaml.safe_dump(config, sort_keys=True))
    return path


def launch_command(config_path: Path, processes: int) -> list[str]:
    """``accelerate launch`` of the distributed entry point (through this interpreter: no PATH lookup)."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_path),
        "--num_processes",
        str(processes),
        "-m",
        ENTRY_POINT,
    ]
