"""The three trainers under DeepSpeed ZeRO-2 and ZeRO-3 on two CPU processes (gloo).

Two launches (``accelerate launch --config_file recipes/accelerate/cpu_deepspeed_2proc.yaml``,
``--zero_stage 2`` / ``--zero_stage 3``), each running, one after another in the same processes:

* one optimizer step of GDPO, DMPO and DiffuGRPO (β > 0, so a reference policy is built — under
  ZeRO-3 it is reloaded from the model's path and sharded as well), and under ZeRO-3 of TR2-D2, whose tree
  searches differ between the ranks yet must make the same model calls;
* the two ranks get prompts of *different lengths* (two prompts, G = 2, one prompt per rank) and
  completions of different true lengths; under ZeRO-3 a rank doing one forward more than the
  other would hang the collective parameter gathers, so the launch finishing is itself the
  test, and the forward passes counted on each rank must be equal;
* ZeRO-3: parameters are really partitioned (``ds_tensor.numel() < ds_numel``), and the sampler
  runs on weights gathered once per rollout (TRL's ``unwrap_model_for_generation``): one
  ``GatheredParameters`` per rollout and every parameter whole during each sampler forward;
* ZeRO-2: the logged loss, reward and gradient norm of a GDPO step equal those of the same
  step run in a single process with the whole batch; LoRA (DiffuGRPO, adapter-disabled
  reference) trains its adapter and leaves the base weights alone; a NaN loss on one rank stops both
  ranks with the same error;
* ZeRO-2 and ZeRO-3: a GDPO run resumed from a checkpoint written inside a rollout (DeepSpeed
  shards of both ranks, atomically renamed) reaches the parameters (under ZeRO-3: each rank's
  parameter shards) and losses of the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.distributed]

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIG = REPO / "recipes" / "accelerate" / "cpu_deepspeed_2proc.yaml"

# Two prompts of very different token lengths (one per rank: G = 2, 2 rows per rank).
PROMPTS = [
    "Use 3 4 to make 7.",
    "Using the numbers 1 2 3 4 5 6 7 8 9 exactly once each, with + - * and /, and brackets where "
    "needed, write an equation that equals 24 and show the steps.",
]

COMMON = dict(
    per_device_train_batch_size=2, num_generations=2, gradient_accumulation_steps=1, max_steps=1,
    num_iterations=1, gen_length=8, block_length=4, diffusion_steps=4, learning_rate=1e-2, bf16=False,
    report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
)

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, os.environ["DLM_TEST_DIR"])
    from datasets import Dataset
    from test_trainers import text_reward
    from test_distributed_deepspeed import PROMPTS, COMMON
    from dlm_trl.trainers import (DiffuGRPOConfig, DiffuGRPOTrainer, DMPOConfig, DMPOTrainer, GDPOConfig, GDPOTrainer,
                                  TR2D2Config, TR2D2Trainer)

    stage = int(os.environ["DLM_ZERO_STAGE"])
    out_dir = os.environ["DLM_TEST_OUT"]

    import atexit
    import torch.distributed as dist

    def record_teardown():  # registered before any trainer, so it runs after the trainers' exit handler
        with open(os.path.join(out_dir, "exit_rank" + os.environ.get("RANK", "0") + ".txt"), "w") as f:
            f.write("initialized" if dist.is_initialized() else "destroyed")

    atexit.register(record_teardown)
    model_path = os.environ["DLM_MODEL_PATH"]
    dataset = Dataset.from_list([{"prompt": p} for p in PROMPTS])
    result = {}

    def run(name, trainer_cls, config_cls, overrides=None, peft_config=None):
        t0 = time.time()
        args = config_cls(output_dir=os.path.join(out_dir, name), ddp_backend="gloo",
                          **{**COMMON, **(overrides or {})})
        trainer = trainer_cls(model=model_path, reward_funcs=[text_reward], args=args, train_dataset=dataset,
                              peft_config=peft_config)
        rec = {"forwards": {"sampler": 0, "estimator": 0, "loss": 0}, "prompt_widths": [], "gathers": [],
               "whole_during_sampling": True}
        module = trainer.accelerator.unwrap_model(trainer.model_wrapped)
        params = list(module.parameters())
        if stage == 3:
            rec["partitioned"] = sum(int(p.ds_tensor.numel() < p.ds_numel) for p in params if hasattr(p, "ds_tensor"))
            rec["num_params"] = len(params)
        state = {"sampling": False, "gathers": 0}

        def pre_hook(mod, args, kwargs):
            if state["sampling"]:
                rec["forwards"]["sampler"] += 1
                if stage == 3 and not all(p.numel() == p.ds_numel for p in params):
                    rec["whole_during_sampling"] = False
            elif torch.is_grad_enabled():
                rec["forwards"]["loss"] += 1
            else:
                rec["forwards"]["estimator"] += 1

        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
        original_generate = trainer._generate_single_turn

        def generate(prompt_ids, *a, **k):
            rec["prompt_widths"].append(max(len(p) for p in prompt_ids))
            state["sampling"], state["gathers"] = True, 0
            try:
                return original_generate(prompt_ids, *a, **k)
            finally:
                state["sampling"] = False
                rec["gathers"].append(state["gathers"])

        trainer._generate_single_turn = generate
        if stage == 3:
            import deepspeed
            real = deepspeed.zero.GatheredParameters

            class Counting(real):
                def __enter__(self):
                    if state["sampling"]:
                        state["gathers"] += 1
                    return super().__enter__()

            deepspeed.zero.GatheredParameters = Counting
        if peft_config is not None:
            before = {n: p.detach().clone() for n, p in module.named_parameters()}
        t1 = time.time()
        try:
            trainer.train()
        finally:
            handle.remove()
            if stage == 3:
                deepspeed.zero.GatheredParameters = real
        logs = [e for e in trainer.state.log_history if "loss" in e]
        rec["global_step"] = trainer.state.global_step
        rec["seconds"] = {"build": round(t1 - t0, 2), "train": round(time.time() - t1, 2)}
        rec["log"] = {k: logs[0].get(k) for k in ("loss", "reward", "grad_norm")}
        if peft_config is not None:
            after = dict(module.named_parameters())
            # One step from a zero-initialised lora_B: only lora_B gets a gradient (lora_A's is B^T·… = 0).
            rec["lora_b_changed"] = sum(int(not torch.equal(before[n], after[n].detach()))
                                        for n in before if "lora_B" in n)
            rec["lora_b_total"] = sum(int("lora_B" in n) for n in before)
            rec["base_changed"] = sum(int(not torch.equal(before[n], after[n].detach()))
                                      for n in before if "lora_" not in n)
        result[name] = rec

    run("gdpo", GDPOTrainer, GDPOConfig, {"estimator_kwargs": {"num_nodes": 2}})
    run("dmpo", DMPOTrainer, DMPOConfig, {"num_replicates": 2, "alpha": 1.0})
    run("diffu_grpo", DiffuGRPOTrainer, DiffuGRPOConfig, {"beta": 0.04})
    if stage == 3:  # the tree search in lockstep: ranks whose trees differ still make the same model calls
        run("tr2d2", TR2D2Trainer, TR2D2Config, {"num_replicates": 2, "alpha": 1.0, "temperature": 1.0,
                                                 "search_children": 2, "search_iterations": 3})
    if stage == 2:
        from peft import LoraConfig
        run("diffu_grpo_lora", DiffuGRPOTrainer, DiffuGRPOConfig, {"beta": 0.04},
            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    rank = int(os.environ.get("RANK", "0"))
    if stage in (2, 3):
        # Checkpoint / resume under DeepSpeed: checkpoint-1 falls inside a rollout (μ = 2); resuming from it
        # (DeepSpeed shards of both ranks, renamed from tmp-checkpoint-1 once both finished) reproduces step 2.
        def build():
            args = GDPOConfig(output_dir=os.path.join(out_dir, "ckpt"), ddp_backend="gloo",
                              **{**COMMON, "estimator_kwargs": {"num_nodes": 2}, "num_iterations": 2,
                                 "max_steps": 2, "save_strategy": "steps", "save_steps": 1})
            return GDPOTrainer(model=model_path, reward_funcs=[text_reward], args=args, train_dataset=dataset)

        def logged(t):
            return [v for e in t.state.log_history if "loss" in e for v in (e["step"], e["loss"])]

        full = build()
        full.train()
        ckpt1 = os.path.join(out_dir, "ckpt", "checkpoint-1")
        files = sorted(os.listdir(ckpt1))
        resumed = build()
        resumed.train(resume_from_checkpoint=ckpt1)
        # ZeRO-3: compare this rank's shards (both runs partition the same way)
        def shard(p):
            return p.ds_tensor if hasattr(p, "ds_tensor") else p

        pf, pr = dict(full.model.named_parameters()), dict(resumed.model.named_parameters())
        result["resume"] = {
            "max_param_diff": max((shard(pf[n]) - shard(pr[n])).abs().max().item() for n in pf),
            "numel": sum(shard(p).numel() for p in pf.values()),
            "files": files, "dirs": sorted(os.listdir(os.path.join(out_dir, "ckpt"))),
            "logged_full": logged(full), "logged_resumed": logged(resumed),
        }
    if stage == 2:
        # A NaN loss on rank 1 only: every rank stops with the same error (none is left waiting in a collective).
        class NaNOnRank1(GDPOTrainer):
            def compute_policy_loss(self, model, inputs):
                loss, metrics = super().compute_policy_loss(model, inputs)
                return (loss * float("nan") if self.accelerator.process_index == 1 else loss), metrics

        try:
            run("gdpo_nan", NaNOnRank1, GDPOConfig, {"estimator_kwargs": {"num_nodes": 2}})
            result["nan_error"] = None
        except FloatingPointError as err:
            result["nan_error"] = str(err)
        # The same NaN with nonfinite="skip": both ranks drop the step (no weight changes) and finish.
        args = GDPOConfig(output_dir=os.path.join(out_dir, "gdpo_nan_skip"), ddp_backend="gloo",
                          **{**COMMON, "estimator_kwargs": {"num_nodes": 2}, "nonfinite": "skip"})
        skipper = NaNOnRank1(model=model_path, reward_funcs=[text_reward], args=args, train_dataset=dataset)
        before = {n: p.detach().clone() for n, p in skipper.model.named_parameters()}
        skipper.train()
        after = dict(skipper.model.named_parameters())
        result["nan_skip"] = {
            "global_step": skipper.state.global_step,
            "max_change": max((after[n].detach() - before[n]).abs().max().item() for n in before),
            "skipped": [e["nonfinite/loss_skipped"] for e in skipper.state.log_history if "nonfinite/loss_skipped" in e],
        }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: Path, env: dict, *extra: str, timeout: float = 240) -> float:
    """``accelerate launch`` the 2-process CPU DeepSpeed config; a timeout (a hang) kills the process group."""
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--config_file", str(ACCELERATE_CONFIG), "--main_process_port",
           str(_free_port()), *extra, str(script)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"launch did not finish in {timeout}s (ranks hung?):\n{output.decode()[-4000:]}")
    assert proc.returncode == 0, output.decode()[-6000:]
    return time.time() - t0


def _env(tmp_path: Path, stage: int, model_path: Path) -> dict:
    return {
        **os.environ, "DLM_TEST_DIR": str(Path(__file__).parent), "DLM_TEST_OUT": str(tmp_path),
        "DLM_MODEL_PATH": str(model_path), "DLM_ZERO_STAGE": str(stage), "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_trainers import make_model

    from dlm_trl.models.tiny.train import build_tokenizer

    torch.set_num_threads(1)
    tok = build_tokenizer(PROMPTS * 4 + ["1+2=3 answer 24 equation"], vocab_size=300)
    path = tmp_path_factory.mktemp("tiny_policy")
    make_model(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _run_stage(stage, tmp_path, model_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    seconds = launch(script, _env(tmp_path, stage, model_path), "--zero_stage", str(stage))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # the script never destroys the process group itself: the trainers' exit handler did, on both ranks
    assert [(tmp_path / f"exit_rank{r}.txt").read_text() for r in (0, 1)] == ["destroyed"] * 2
    print(f"ZeRO-{stage} launch: {seconds:.1f}s;", {k: v.get("seconds") for k, v in ranks[0].items()
                                                    if isinstance(v, dict)})
    return ranks


def _check_common(ranks):
    r0, r1 = ranks
    for name in r0:
        a, b = r0[name], r1[name]
        assert a["global_step"] == b["global_step"] == 1, name
        loss = a["log"]["loss"]
        assert loss is not None and loss == loss and abs(loss) != float("inf"), (name, a["log"])
        # Ranks sampled prompts of different widths, yet ran the same number of forwards of every kind.
        assert a["prompt_widths"] != b["prompt_widths"], (name, a["prompt_widths"], b["prompt_widths"])
        assert a["forwards"] == b["forwards"], (name, a["forwards"], b["forwards"])
        if name == "tr2d2":  # 3 search iterations of 2 children; the first expands the root (4 steps)
            assert a["forwards"]["sampler"] > 4 and a["forwards"]["estimator"] == 0, a["forwards"]
        else:
            assert a["forwards"]["sampler"] == 4  # diffusion_steps, one rollout
        assert a["forwards"]["loss"] >= 1


def _check_resume(ranks):
    for r, rank in enumerate(ranks):  # resumed from a DeepSpeed checkpoint inside a rollout: same parameters
        res = rank.pop("resume")
        assert res["numel"] > 0 and res["max_param_diff"] <= 1e-6, res["max_param_diff"]
        assert len(res["logged_full"]) == 4  # (step, loss) of steps 1 and 2
        assert res["logged_full"] == pytest.approx(res["logged_resumed"], abs=1e-6)
        assert {"global_step1", "latest", "trainer_state.json", f"dlm_trl_rollout_state_{r}.pt",
                f"rng_state_{r}.pth"} <= set(res["files"]), res["files"]
        ckpts = [d for d in res["dirs"] if "checkpoint" in d]
        assert ckpts == ["checkpoint-1", "checkpoint-2"], res["dirs"]  # no tmp-checkpoint-* left


def test_zero3_three_trainers_sharded_no_hang_gather_once(tmp_path, model_path):
    ranks = _run_stage(3, tmp_path, model_path)
    _check_resume(ranks)  # kill/resume under ZeRO-3: each rank's shards match the uninterrupted run
    _check_common(ranks)
    for rank in ranks:
        for name, rec in rank.items():
            assert rec["partitioned"] > 0, f"{name}: no parameter is partitioned under ZeRO-3"
            assert rec["gathers"] == [1], f"{name}: GatheredParameters per rollout: {rec['gathers']}"
            assert rec["whole_during_sampling"], f"{name}: a sampler forward saw partitioned parameters"


def test_zero2_three_trainers_lora_and_single_process_equality(tmp_path, model_path):
    ranks = _run_stage(2, tmp_path, model_path)
    for rank in ranks:  # NaN loss on rank 1 only: both ranks raised the same error before the backward pass
        err = rank.pop("nan_error")
        assert err and "non-finite loss" in err and "rank(s) [1]" in err, err
        skip = rank.pop("nan_skip")  # nonfinite="skip": the step is dropped on both ranks, training finishes
        assert skip["global_step"] == 1 and skip["max_change"] == 0.0 and skip["skipped"] == [1.0], skip
    _check_resume(ranks)
    _check_common(ranks)
    lora = ranks[0]["diffu_grpo_lora"]
    assert lora["lora_b_total"] > 0 and lora["lora_b_changed"] == lora["lora_b_total"], lora
    assert lora["base_changed"] == 0, lora

    # The same GDPO step in one process holding the whole batch (2 ranks x 2 rows = 4 rows = 2 groups).
    from datasets import Dataset
    from test_trainers import text_reward

    from dlm_trl.trainers import GDPOConfig, GDPOTrainer

    torch.set_num_threads(1)
    args = GDPOConfig(output_dir=str(tmp_path / "single"), use_cpu=True, estimator_kwargs={"num_nodes": 2},
                      **{**COMMON, "per_device_train_batch_size": 4})
    trainer = GDPOTrainer(model=str(model_path), reward_funcs=[text_reward], args=args,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS]))
    trainer.train()
    single = next(e for e in trainer.state.log_history if "loss" in e)
    dist = ranks[0]["gdpo"]["log"]
    assert dist == ranks[1]["gdpo"]["log"]
    assert single["reward"] == pytest.approx(dist["reward"], abs=1e-6)
    assert single["loss"] == pytest.approx(dist["loss"], abs=1e-5)
    assert single["grad_norm"] == pytest.approx(dist["grad_norm"], rel=1e-4, abs=1e-7)
    assert single["grad_norm"] > 0


def test_trainers_destroy_the_process_group_before_interpreter_shutdown(tmp_path, monkeypatch):
    """A launched run whose script never destroys the process group leaves it to interpreter finalization, where
    gloo's worker threads can abort the rank after a finished run ("terminate called without an active
    exception", exit -6; this file's ZeRO-3 launch did so once in CI). Building a trainer under an initialised
    group registers an exit handler that destroys it once, and does nothing when the script already did."""
    import atexit

    import torch.distributed as dist

    from dlm_trl.trainers import _base

    registered = []
    monkeypatch.setattr(atexit, "register", lambda fn, *a, **k: registered.append(fn))
    monkeypatch.setitem(_base._EXIT_HANDLER, "registered", False)
    _base._register_distributed_teardown()
    assert registered == []  # no process group: nothing to tear down
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        _base._register_distributed_teardown()
        _base._register_distributed_teardown()
        assert registered == [_base._destroy_process_group_at_exit]  # once per process
        registered[0]()
        assert not dist.is_initialized()
        registered[0]()  # already destroyed (accelerator.end_training()): a no-op
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
