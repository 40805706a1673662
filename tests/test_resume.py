"""Checkpoint / resume: a run killed after a checkpoint and resumed ends where an uninterrupted run does.

* GDPO, 4 optimizer steps, a checkpoint every step; one rollout batch serves 2 steps (2 accumulation
  steps x μ = 2 inner iterations / 2 steps per generation), so checkpoint 3 falls *inside* a rollout:
  the rest of the buffered rollout batch, the rollout counter (which seeds the sampler and the masks),
  the optimizer, scheduler and RNG states must all come back. A subprocess is killed with
  ``os._exit`` right after checkpoint 3 is written; ``resume_from_checkpoint=True`` finishes the run in
  this process; parameters and every logged reward match the uninterrupted run.
* Atomic save: a save that crashes midway (after the weights, before the RNG state) leaves only a
  ``tmp-checkpoint-N`` directory; the latest *valid* checkpoint is still the previous one, and
  resuming from it (DiffuGRPO with a reference policy) again matches the uninterrupted run.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from test_trainers import COMMON, make_trainer, text_reward  # noqa: E402,F401

from dlm_trl.models.tiny.train import build_tokenizer  # noqa: E402
from dlm_trl.tasks import get_task  # noqa: E402

RESUME = dict(max_steps=4, save_strategy="steps", save_steps=1)

KILLED = textwrap.dedent(
    """
    import os, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, os.environ["DLM_TEST_DIR"])
    from pathlib import Path
    from transformers import TrainerCallback
    from test_resume import tokenizer_and_dataset, RESUME
    from test_trainers import make_trainer

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == int(os.environ["DLM_KILL_AT"]):
                os._exit(17)  # no cleanup, as a killed job

    tok, ds = tokenizer_and_dataset()
    trainer = make_trainer("gdpo", tok, ds, Path(os.environ["DLM_TEST_OUT"]), **RESUME)
    trainer.add_callback(KillAfterSave())
    trainer.train()
    """
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tokenizer_and_dataset():
    rows = get_task("countdown").rows("train", 40, seed=1)
    corpus = [r["prompt"][0]["content"] for r in rows] + [r["reference"] for r in rows]
    return build_tokenizer(corpus, vocab_size=300), get_task("countdown").dataset("train", 8, seed=0)


def params(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def rewards(trainer):
    """Logged (step, reward) of every rollout and (step, loss) of every optimizer step."""
    logs = trainer.state.log_history
    return [(e["step"], e["reward"]) for e in logs if "reward" in e] + [(e["step"], e["loss"]) for e in logs if "loss" in e]


def assert_same_run(a, b):
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    worst = max((pa[n] - pb[n]).abs().max().item() for n in pa)
    assert worst <= 1e-6, f"parameters differ from the uninterrupted run by up to {worst}"
    ra, rb = rewards(a), rewards(b)
    assert [s for s, _ in ra] == [s for s, _ in rb]
    assert [v for _, v in ra] == pytest.approx([v for _, v in rb], abs=1e-6)
    assert a.state.global_step == b.state.global_step


@pytest.fixture(scope="module")
def data():
    return tokenizer_and_dataset()


def test_killed_after_checkpoint_inside_a_rollout_resumes_exactly(data, tmp_path):
    tok, ds = data
    full = make_trainer("gdpo", tok, ds, tmp_path / "full", **{**RESUME, "save_strategy": "no"})
    full.train()
    assert len(rewards(full)) == 2 + 4  # rollouts at steps 1 and 3; a loss at every step

    env = {**os.environ, "DLM_TEST_DIR": str(Path(__file__).parent), "DLM_TEST_OUT": str(tmp_path / "killed"),
           "DLM_KILL_AT": "3", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, timeout=300)
    assert proc.returncode == 17, proc.stderr.decode()[-4000:]
    out = tmp_path / "killed" / "gdpo"
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-3")
    assert (out / "checkpoint-3" / "dlm_trl_rollout_state_0.pt").is_file()
    state = torch.load(out / "checkpoint-3" / "dlm_trl_rollout_state_0.pt", weights_only=False)
    assert state["rollout_index"] == 2 and state["buffered_inputs"] is not None  # inside rollout 2

    resumed = make_trainer("gdpo", tok, ds, tmp_path / "killed", **RESUME)
    resumed.train(resume_from_checkpoint=True)
    assert resumed._rollout_index == full._rollout_index == 2
    assert_same_run(resumed, full)


def test_crash_during_save_leaves_no_valid_checkpoint_and_resume_uses_the_previous(data, tmp_path, monkeypatch):
    tok, ds = data
    kw = {**RESUME, "max_steps": 3}
    full = make_trainer("diffu_grpo", tok, ds, tmp_path / "full", **{**kw, "save_strategy": "no"})
    full.train()

    crashing = make_trainer("diffu_grpo", tok, ds, tmp_path / "crash", **kw)
    original = crashing._save_rng_state

    def crash_at_step_2(output_dir):
        if crashing.state.global_step == 2:
            raise OSError("disk full (simulated) while writing the RNG state")
        original(output_dir)

    crashing._save_rng_state = crash_at_step_2
    with pytest.raises(OSError, match="simulated"):
        crashing.train()
    out = tmp_path / "crash" / "diffu_grpo"
    assert (out / "tmp-checkpoint-2" / "checkpoint-2" / "model.safetensors").is_file()  # half-written
    assert not (out / "checkpoint-2").exists()
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-1")
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
            "dlm_trl_rollout_state_0.pt"} <= set(os.listdir(out / "checkpoint-1"))

    resumed = make_trainer("diffu_grpo", tok, ds, tmp_path / "crash", **kw)
    resumed.train(resume_from_checkpoint=True)
    assert_same_run(resumed, full)
    assert (out / "checkpoint-3").is_dir() and not (out / "tmp-checkpoint-3").exists()
    assert not (out / "tmp-checkpoint-2").exists()  # a rerun of step 2's save cleaned the leftover


# transformers Trainer methods the atomic save / rollout-state restore override or call.
HF_HOOKS = {
    "_save_checkpoint": ["self", "model", "trial"],
    "_get_output_dir": ["self", "trial"],
    "_load_optimizer_and_scheduler": ["self", "checkpoint"],
    "_save_rng_state": ["self", "output_dir"],
}


@pytest.mark.parametrize("hook", sorted(HF_HOOKS))
def test_transformers_checkpoint_hooks_unchanged(hook):
    got = list(inspect.signature(getattr(Trainer, hook)).parameters)
    assert got == HF_HOOKS[hook], (
        f"transformers changed Trainer.{hook} (used by the atomic checkpoint in dlm_trl/trainers/_base.py): {got}"
    )
    assert "run_dir = self._get_output_dir(trial=trial)" in inspect.getsource(Trainer._save_checkpoint)
