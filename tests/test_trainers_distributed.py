"""DMPO's group weights when a group of G rollouts is split across processes (torchrun, 2 CPU ranks).

Each rank holds half of every group; the weights are computed on the gathered group, so the
baseline-subtracted weights of a group sum to zero only over both ranks together.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, os.environ["DLM_TEST_DIR"])
    from test_trainers import make_model, text_reward
    from dlm_trl.models.tiny.train import build_tokenizer
    from dlm_trl.tasks import get_task
    from dlm_trl.trainers import DMPOConfig, DMPOTrainer

    rows = get_task("countdown").rows("train", 40, seed=1)
    tok = build_tokenizer([r["prompt"][0]["content"] for r in rows] + [r["reference"] for r in rows], 300)
    args = DMPOConfig(
        output_dir=os.environ["DLM_TEST_OUT"], per_device_train_batch_size=2, num_generations=8,
        gradient_accumulation_steps=2, max_steps=1, num_iterations=1, gen_length=8, block_length=4,
        diffusion_steps=4, num_replicates=2, alpha=1.0, bf16=False, use_cpu=True, report_to="none",
        save_strategy="no", disable_tqdm=True, seed=0,
    )
    trainer = DMPOTrainer(model=make_model(tok), reward_funcs=[text_reward], args=args,
                          train_dataset=get_task("countdown").dataset("train", 8, seed=0), processing_class=tok)
    seen = []
    original = trainer._score_rollout
    def recording(out):
        original(out)
        seen.append({"weights": out["dmpo_weights"].tolist(), "advantages": out["advantages"].tolist()})
    trainer._score_rollout = recording
    trainer.train()
    rank = trainer.accelerator.process_index
    with open(os.path.join(os.environ["DLM_TEST_OUT"], f"rank{rank}.json"), "w") as f:
        json.dump(seen, f)
    """
)


def run_two_ranks(script_text: str, tmp_path) -> list:
    """Run ``script_text`` under ``torchrun --nproc_per_node 2`` (it writes ``$DLM_TEST_OUT/rank{r}.json``)
    and return the two ranks' JSON."""
    script = tmp_path / "run.py"
    script.write_text(script_text)
    env = {
        **os.environ, "DLM_TEST_DIR": str(Path(__file__).parent), "DLM_TEST_OUT": str(tmp_path),
        "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    torchrun = Path(sys.executable).with_name("torchrun")
    run = subprocess.run([str(torchrun), "--nproc_per_node", "2", str(script)], env=env, timeout=300,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_dmpo_groups_split_across_processes(tmp_path):
    ranks = run_two_ranks(SCRIPT, tmp_path)
    # Generation batch: 2 rows × 2 ranks × 2 accumulation steps = 8 rows = one group of G = 8, of which each
    # rank holds 4: the weights sum to zero over the gathered group, not over a rank's half.
    for rollout0, rollout1 in zip(ranks[0], ranks[1], strict=True):
        assert len(rollout0["weights"]) == len(rollout1["weights"]) == 4
        assert abs(sum(rollout0["weights"]) + sum(rollout1["weights"])) < 1e-5
        assert abs(sum(rollout0["weights"])) > 1e-6  # a per-rank softmax would make this 0
