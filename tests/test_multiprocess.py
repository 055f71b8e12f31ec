"""scripts/train.py under several processes (DDP, two CPU processes on gloo) and the accelerate configs it ships."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.commands.launch import launch_command_parser

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "accelerate"


def launch_env() -> dict[str, str]:
    """CPU only (gloo), one thread per process, offline, and the repository importable."""
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "COURSE_PROFILE": "tiny", "PYTHONPATH": str(REPO)}


# Prevents: every rank loading the 4-bit model on the same device, or saving the adapter twice, under accelerate launch.
@pytest.mark.slow
def test_train_script_runs_ddp_on_two_processes(tmp_path: Path, shallow_model: Path) -> None:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "ddp.yaml"),
               "--num_processes", "2", str(REPO / "scripts" / "train.py"), "--lesson", "nekoqa", "--profile", "tiny",
               "--model", str(shallow_model),
               "--max-steps", "2", "--train-rows", "4", "--cutoff", "32", "--output", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "world_size=2" in log, log[-3000:]
    assert log.count("adapter saved") == 1, log[-3000:]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter" / ".course-complete").is_file()


# Prevents: a config key accelerate does not know (a typo is silently ignored, so ZeRO-3 would run as something else),
# a precision that overrides the script's choice per card, or DeepSpeed settings in the plain DDP config.
@pytest.mark.parametrize(("name", "kind", "stage"), [("ddp", "MULTI_GPU", None), ("deepspeed_zero2", "DEEPSPEED", 2),
                                                     ("deepspeed_zero3", "DEEPSPEED", 3)])
def test_accelerate_configs_load(name: str, kind: str, stage: int | None) -> None:
    config = ClusterConfig.from_yaml_file(CONFIGS / f"{name}.yaml")
    assert config.distributed_type.value == kind
    assert config.num_machines == 1
    assert config.mixed_precision == "no"  # scripts/train.py picks bf16 or fp16 for the card; a value here overrides it
    if stage is None:  # plain DDP: a DeepSpeed section would be ignored, leaving a reader to think ZeRO runs
        assert not config.deepspeed_config
        return
    launch_options = set(vars(launch_command_parser().parse_args(["train.py"])))
    assert set(config.deepspeed_config) <= launch_options
    assert config.deepspeed_config.get("zero_stage") == stage
    if stage == 3:
        assert config.deepspeed_config["zero3_init_flag"] and config.deepspeed_config["zero3_save_16bit_model"]
