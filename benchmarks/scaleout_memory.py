"""Memory per rank and seconds per step of one GDPO configuration under DDP, ZeRO-2 and ZeRO-3,
on 2 CPU processes (gloo), with a random model of the embedded tiny model's size.

    .venv/bin/python benchmarks/scaleout_memory.py            # all three, prints a markdown table
    .venv/bin/python benchmarks/scaleout_memory.py --steps 4 --modes ddp zero3

DDP runs under ``torchrun`` (``use_cpu=True``); ZeRO-2/3 under ``accelerate launch --config_file
recipes/accelerate/cpu_deepspeed_2proc.yaml [--zero_stage 3]``. Columns, per rank (max over ranks):

* ``model state`` — bytes of the distinct tensors a rank holds for training: its parameters (under
  ZeRO-3 only its partition, ``ds_tensor``), the optimizer's own parameter copies and its state
  (Adam moments). This is what ZeRO shards; it is measured, not computed from a formula.
* ``peak RSS`` — the process's peak resident memory (``ru_maxrss``), and its growth from just before
  the trainer is built; on a model this small it is dominated by Python, torch and DeepSpeed
  themselves, not by the model.
* ``s/step`` — mean wall-clock of the optimizer steps after the first (which includes set-up).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIG = REPO / "recipes" / "accelerate" / "cpu_deepspeed_2proc.yaml"
MODES = ("ddp", "zero2", "zero3")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _tensor_bytes(objs) -> int:
    import torch

    seen, total = set(), 0

    def visit(x):
        nonlocal total
        if isinstance(x, torch.Tensor):
            if x.numel() == 0:
                return
            key = (x.untyped_storage().data_ptr(), x.device.type)
            if key not in seen:
                seen.add(key)
                total += x.untyped_storage().nbytes()
        elif isinstance(x, dict):
            for v in x.values():
                visit(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                visit(v)

    for o in objs:
        visit(o)
    return total


def _model_state_bytes(trainer) -> int:
    opt = trainer.optimizer
    while hasattr(opt, "optimizer") and opt.optimizer is not opt:  # accelerate / DeepSpeed wrappers
        opt = opt.optimizer
    params = []
    for p in trainer.accelerator.unwrap_model(trainer.model_wrapped).parameters():
        params.append(p.ds_tensor if hasattr(p, "ds_tensor") else p)
    groups = [p for g in opt.param_groups for p in g["params"]]
    return _tensor_bytes([params, groups, list(opt.state.values())])


def worker(args) -> None:
    import torch

    torch.set_num_threads(1)
    from transformers import TrainerCallback

    from dlm_trl.models import TinyDLMConfig, TinyDLMForMaskedDiffusion
    from dlm_trl.models.tiny.train import build_tokenizer
    from dlm_trl.tasks import get_task
    from dlm_trl.trainers import GDPOConfig, GDPOTrainer

    rows = get_task("countdown").rows("train", 40, seed=1)
    tok = build_tokenizer([r["prompt"][0]["content"] for r in rows] + [r["reference"] for r in rows], 300)
    torch.manual_seed(0)
    model = TinyDLMForMaskedDiffusion(TinyDLMConfig(
        vocab_size=len(tok), mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
    ))  # the embedded model's default size (hidden 256, 4 layers)
    n_params = sum(p.numel() for p in model.parameters())

    def reward(prompts, completions, **kw):
        return [float(sum(map(ord, c if isinstance(c, str) else c[-1]["content"])) % 5) / 4 for c in completions]

    deepspeed = args.mode != "ddp"
    cfg = GDPOConfig(
        output_dir=args.out, per_device_train_batch_size=4, num_generations=4, gradient_accumulation_steps=1,
        max_steps=args.steps, num_iterations=1, gen_length=16, block_length=8, diffusion_steps=8,
        estimator_kwargs={"num_nodes": 2}, learning_rate=1e-4, bf16=False, use_cpu=not deepspeed,
        ddp_backend="gloo", report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
    )
    rss0 = _rss_mib()
    trainer = GDPOTrainer(model=model, reward_funcs=[reward], args=cfg, processing_class=tok,
                          train_dataset=get_task("countdown").dataset("train", 16, seed=0))
    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            stamps.append(time.perf_counter())

    trainer.add_callback(Clock())
    t0 = time.perf_counter()
    trainer.train()
    steps = [b - a for a, b in zip([t0] + stamps[:-1], stamps, strict=True)]
    rank = trainer.accelerator.process_index
    result = {
        "rank": rank, "mode": args.mode, "params": n_params,
        "model_state_mib": _model_state_bytes(trainer) / 2**20,
        "peak_rss_mib": _rss_mib(), "rss_growth_mib": _rss_mib() - rss0,
        "s_per_step": sum(steps[1:]) / max(1, len(steps) - 1), "first_step_s": steps[0],
    }
    Path(args.out, f"result_{rank}.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(mode: str, steps: int, out: str) -> list[dict]:
    me = str(Path(__file__).resolve())
    bindir = Path(sys.executable).parent
    tail = [me, "--worker", "--mode", mode, "--steps", str(steps), "--out", out]
    if mode == "ddp":
        cmd = [str(bindir / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_free_port()), *tail]
    else:
        cmd = [str(bindir / "accelerate"), "launch", "--config_file", str(ACCELERATE_CONFIG),
               "--main_process_port", str(_free_port()), "--zero_stage", mode[-1], *tail]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return [json.loads(Path(out, f"result_{r}.json").read_text()) for r in (0, 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="ddp", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    for mode in args.modes:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.time()
            ranks = launch(mode, args.steps, out)
            print(f"{mode}: {time.time() - t0:.0f}s wall", file=sys.stderr)
        rows.append((mode, ranks))
    n = rows[0][1][0]["params"]
    print(f"GDPO, random tiny model ({n / 1e6:.2f} M params, fp32), 2 CPU processes x 1 thread, "
          f"4 rows/rank, gen_length 16, {args.steps} steps\n")
    print("| config | model state / rank (MiB) | peak RSS / rank (MiB) | RSS growth / rank (MiB) | s/step |")
    print("|---|---|---|---|---|")
    for mode, ranks in rows:
        def mx(k, ranks=ranks):
            return max(r[k] for r in ranks)

        print(f"| {mode} | {mx('model_state_mib'):.1f} | {mx('peak_rss_mib'):.0f} | {mx('rss_growth_mib'):.0f} | "
              f"{mx('s_per_step'):.2f} |")


if __name__ == "__main__":
    main()
