"""Accelerate configs generated from the spec, read back by accelerate's own launcher code.

Each config goes through what ``accelerate launch`` does with it — ``ClusterConfig`` parsing, the
launch argument parser and validation, and the environment handed to the training processes —
and, for DeepSpeed, accelerate's ``DeepSpeedPlugin`` builds its ZeRO config from that environment.
(FSDP's plugin refuses to build without a GPU; its environment is what the processes read.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from sftlab.errors import SftlabError
from sftlab.sources.tiny import resolve_tiny
from sftlab.spec.schema import TrainingConfig
from sftlab.training.accelerate_config import ENTRY_POINT, accelerate_config, launch_command, layer_classes
from sftlab.training.sft import check_method, sft_config


def launched(
    training: TrainingConfig, tmp_path: Path, processes: int = 4, **kw: Any
) -> tuple[Any, dict[str, str], Any]:
    """(parsed ClusterConfig, the env accelerate gives the processes, its launch args) for a generated config."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import (
        _validate_launch_command,
        launch_command_parser,
    )
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump(accelerate_config(training, processes, **kw)))
    command = launch_command(path, processes)
    assert command[1:3] == ["-m", "accelerate.commands.launch"] and command[-2:] == ["-m", ENTRY_POINT]
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(command[3:]))
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command sets it
        env = prepare_deepspeed_cmd_env(args)[1]
    else:
        env = prepare_multi_gpu_env(args)
    return ClusterConfig.from_yaml_file(str(path)), env, args


def strategy(name: str) -> TrainingConfig:
    return TrainingConfig(distributed={"strategy": name})


def test_ddp_config(tmp_path: Path) -> None:
    config, env, args = launched(strategy("ddp"), tmp_path, cuda=True, bf16=True)
    assert config.distributed_type.value == "MULTI_GPU" and config.num_processes == 4 and not config.use_cpu
    assert args.multi_gpu and not (args.use_fsdp or args.use_deepspeed)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert args.main_process_port not in (0, 29500)  # a free port was picked for this launch


def test_cpu_config_has_no_mixed_precision(tmp_path: Path) -> None:
    config, env, _ = launched(strategy("ddp"), tmp_path, processes=2, cuda=False, bf16=False)
    assert config.use_cpu and config.num_processes == 2 and env["ACCELERATE_MIXED_PRECISION"] == "no"


def test_fsdp_config(tmp_path: Path) -> None:
    config, env, args = launched(strategy("fsdp"), tmp_path, cuda=True, bf16=True, layers=["LlamaDecoderLayer"])
    assert config.distributed_type.value == "FSDP" and args.use_fsdp
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "LlamaDecoderLayer"
    assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    assert env["FSDP_USE_ORIG_PARAMS"] == "true"


def test_deepspeed_zero3_config(tmp_path: Path) -> None:
    from accelerate.utils import DeepSpeedPlugin

    config, env, args = launched(strategy("deepspeed_zero3"), tmp_path, cuda=True, bf16=True)
    assert config.distributed_type.value == "DEEPSPEED" and args.use_deepspeed
    with mock.patch.dict(os.environ, env):
        ds = DeepSpeedPlugin().deepspeed_config
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    # Left to the Trainer, which fills them from the training arguments.
    assert (
        ds["gradient_accumulation_steps"] == ds["train_micro_batch_size_per_gpu"] == ds["gradient_clipping"] == "auto"
    )


@pytest.mark.parametrize(
    ("uri", "layer"),
    [("tiny:llama?hidden=64&layers=2", "LlamaDecoderLayer"), ("tiny:qwen2?hidden=64&layers=2", "Qwen2DecoderLayer")],
)
def test_fsdp_wraps_the_models_own_layer_class(tmp_path: Path, uri: str, layer: str) -> None:
    assert layer_classes(str(resolve_tiny(uri, tmp_path))) == [layer]


def test_fsdp_needs_layer_classes() -> None:
    with pytest.raises(SftlabError, match="layer classes"):
        accelerate_config(strategy("fsdp"), 2, cuda=True, bf16=True)


@pytest.mark.parametrize(
    ("update", "message"),
    [
        (
            {"attn_implementation": "flash_attention_2"},
            "training.attn_implementation: flash_attention_2 needs a CUDA GPU and the flash-attn package; "
            "use auto or sdpa",
        ),
        ({"use_liger_kernel": True}, "training.use_liger_kernel needs a CUDA GPU and the liger-kernel package"),
        (
            {"distributed": {"strategy": "fsdp"}},
            "training.distributed.strategy: fsdp needs CUDA GPUs; use ddp or none on CPU",
        ),
        (
            {"distributed": {"strategy": "deepspeed_zero3"}},
            "training.distributed.strategy: deepspeed_zero3 needs CUDA GPUs; use ddp or none on CPU",
        ),
    ],
)
def test_settings_this_cpu_machine_cannot_run_are_one_line_errors(update: dict[str, Any], message: str) -> None:
    with pytest.raises(SftlabError) as info:
        check_method(TrainingConfig(**update))
    assert str(info.value) == message


def test_cpu_training_options(tmp_path: Path) -> None:
    assert not sft_config(
        TrainingConfig(global_batch_size=8, per_device_batch_size=8), tmp_path
    ).gradient_checkpointing  # None: CUDA only
    forced = sft_config(
        TrainingConfig(global_batch_size=8, per_device_batch_size=8, gradient_checkpointing=True), tmp_path
    )
    assert forced.gradient_checkpointing and forced.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert not forced.bf16 and not forced.use_liger_kernel
