"""The launch configs in recipes/accelerate/ load with accelerate's own loader and say what docs/scaleout.md says."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "accelerate"

# file -> (distributed type, ZeRO stage or None, optimizer offload, parameter offload, machines, processes)
EXPECTED = {
    "single_gpu.yaml": (DistributedType.NO, None, None, None, 1, 1),
    "ddp.yaml": (DistributedType.MULTI_GPU, None, None, None, 1, 8),
    "zero2.yaml": (DistributedType.DEEPSPEED, 2, "none", "none", 1, 8),
    "zero3.yaml": (DistributedType.DEEPSPEED, 3, "none", "none", 1, 8),
    "zero3_offload.yaml": (DistributedType.DEEPSPEED, 3, "cpu", "cpu", 1, 8),
    "multinode_zero3.yaml": (DistributedType.DEEPSPEED, 3, "none", "none", 2, 16),
    "cpu_deepspeed_2proc.yaml": (DistributedType.DEEPSPEED, 2, "none", "none", 1, 2),
}


def test_every_config_is_listed_and_documented():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)
    doc = (ROOT / "docs" / "scaleout.md").read_text()
    missing = [name for name in EXPECTED if f"`{name}`" not in doc]
    assert not missing, f"docs/scaleout.md does not describe {missing}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerate(name):
    cfg = load_config_from_file(str(CONFIGS / name))
    kind, stage, off_opt, off_param, machines, procs = EXPECTED[name]
    assert cfg.distributed_type == kind
    assert (cfg.num_machines, cfg.num_processes) == (machines, procs)
    assert cfg.use_cpu is False  # DeepSpeed on CPU picks its CPU accelerator itself; use_cpu would break it
    if stage is None:
        assert not cfg.deepspeed_config
    else:
        ds = cfg.deepspeed_config
        assert (ds["zero_stage"], ds["offload_optimizer_device"], ds["offload_param_device"]) == (stage, off_opt, off_param)
    if machines > 1:
        assert cfg.main_process_ip and cfg.main_process_port
    if name == "cpu_deepspeed_2proc.yaml":
        assert cfg.mixed_precision == "no"
