"""Build the embedded tiny model: tokenizer + LLaDA-style masked-diffusion SFT.

Run with ``make tiny-model`` (or ``python -m dlm_trl.models.tiny.train``). Deterministic
for a seed on a given machine; ~12 minutes on 2 idle CPU cores (default 1500 steps). Training stops at
``--steps`` or ``--max-minutes``, whichever comes first, so the model is deliberately
only *partially* competent: RL needs headroom.

1. A byte-level BPE tokenizer (``tokenizers``; digits split one per token) trained on the
   task prompts/answers and GSM8K text, with LLaDA's special tokens and a LLaDA-like
   chat template, saved as ``tokenizer.json``.
2. A :class:`TinyDLMForMaskedDiffusion` trained with LLaDA's SFT loss
   (:func:`dlm_trl.masking.sft_loss`: answer tokens masked with probability t,
   CE / t, normalised by answer length) on synthetic Countdown and 4×4 Sudoku. Answers
   are EOS-padded to the task's generation length, as in LLaDA's SFT, so the model learns
   to end its answer.
3. An evaluation on held-out puzzles with the d1 protocol (temperature 0) is printed.

Variants for experiments (the shipped checkpoint is the default run): ``--init-from`` continues from a
checkpoint and ``--task-mix`` chooses the tasks, e.g. a Sudoku-capable model for the Sudoku benchmarks::

    python -m dlm_trl.models.tiny.train --init-from dlm_trl/models/tiny/checkpoint --task-mix sudoku=1 \
        --steps 400 --warmup 50 --lr 3e-4 --eval-split validation --output-dir outputs/tiny_sudoku
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from pathlib import Path

import torch

from ...masking import sample_times, sft_loss
from . import CHECKPOINT_DIR
from .modeling import TinyDLMConfig, TinyDLMForMaskedDiffusion

SPECIAL_TOKENS = [
    "<|endoftext|>",  # 0: EOS and padding
    "<|mdm_mask|>",  # 1: the mask token
    "<|startoftext|>",  # 2: BOS
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]

# LLaDA-like chat template (BOS once, header-delimited turns, assistant header on request).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Only Countdown (the default task) is trained: the step budget is small and Sudoku's
# long answers would cost a third of it. Sudoku text still shapes the tokenizer.
TASK_MIX = {"countdown": 1.0}
TRAINABLE_TASKS = ("countdown", "sudoku")  # the synthetic tasks with gold solutions (`--task-mix`)


def parse_task_mix(text: str) -> dict[str, float]:
    """``"countdown=0.7,sudoku=0.3"`` → ``{"countdown": 0.7, "sudoku": 0.3}`` (a bare name weighs 1)."""
    mix: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in TRAINABLE_TASKS:
            raise ValueError(f"--task-mix: unknown task {name!r}; the tiny model trains on {list(TRAINABLE_TASKS)}")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"--task-mix: weight of {name!r} must be a number, got {weight!r}") from None
        if not w > 0:
            raise ValueError(f"--task-mix: weight of {name!r} must be > 0, got {w:g}")
        mix[name] = w
    if not mix:
        raise ValueError(f"--task-mix names no task; use e.g. 'sudoku=1' (tasks: {list(TRAINABLE_TASKS)})")
    return mix


def build_tokenizer(corpus: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        mask_token="<|mdm_mask|>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
        padding_side="left",
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _corpus(task_rows: dict[str, list[dict]], gsm8k_limit: int = 2000) -> list[str]:
    from ...tasks import gsm8k

    texts = []
    for rows in task_rows.values():
        for r in rows:
            texts.append(r["prompt"][0]["content"])
            texts.append(r["reference"])
    from ...tasks.sources import shared_candidates

    if any((d / "gsm8k").is_dir() for d in shared_candidates()):  # the full data only, never the fixture
        for r in gsm8k.load_rows("train")[:gsm8k_limit]:
            texts += [r["question"], r["answer"]]
    return texts


def encode_examples(tokenizer, rows: list[dict], gen_length: int) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt ids (chat template with generation prompt) and EOS-padded answer ids per row."""
    prompts, answers = [], []
    eos = tokenizer.eos_token_id
    for r in rows:
        p = tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True)
        if isinstance(p, dict) or hasattr(p, "input_ids"):
            p = p["input_ids"]
        a = tokenizer(r["reference"], add_special_tokens=False)["input_ids"] + [eos]
        if len(a) > gen_length:
            continue  # answer does not fit the generation budget; skip it
        prompts.append(list(p))
        answers.append(a + [eos] * (gen_length - len(a)))
    return prompts, answers


def make_batch(prompts, answers, idx, pad_id):
    """Left-pad prompts to a common length → ids [B, P+L], prompt_lengths [B] (incl. padding), attention [B, P+L]."""
    P = max(len(prompts[i]) for i in idx)
    ids, att = [], []
    for i in idx:
        pad = P - len(prompts[i])
        ids.append([pad_id] * pad + prompts[i] + answers[i])
        att.append([0] * pad + [1] * (len(prompts[i]) + len(answers[i])))
    ids_t = torch.tensor(ids)
    return ids_t, torch.full((len(idx),), P), torch.tensor(att)



def sft_step(model, opt, prompts, answers, idx, pad_id, mask_token_id, generator, max_grad_norm: float = 1.0) -> float:
    """One optimizer step of LLaDA's SFT loss on the pairs ``idx``: stratified mask times (shuffled), the loss,
    clipped gradients, ``opt.step()``; returns the loss. Every random draw comes from ``generator``."""
    ids, plen, att = make_batch(prompts, answers, idx, pad_id)
    t = sample_times(len(idx), generator=generator, stratified=True)[torch.randperm(len(idx), generator=generator)]
    device = next(model.parameters()).device
    loss = sft_loss(model, ids.to(device), plen.to(device), mask_token_id, generator=generator,
                    attention_mask=att.to(device), t=t.to(device))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    return float(loss.detach())


def write_portable_tokenizer_config(folder: Path) -> None:
    """Rewrite ``tokenizer_config.json`` in the form transformers 4.x and 5.x both read.

    transformers 5 saves ``tokenizer_class: TokenizersBackend`` (a 5-only class) and
    ``extra_special_tokens`` as a list (4.x expects a dict); both describe a plain fast tokenizer.
    """
    path = Path(folder) / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg.pop("backend", None)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = cfg.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        cfg["additional_special_tokens"] = extra
    elif isinstance(extra, dict):
        cfg["extra_special_tokens"] = extra
    path.write_text(json.dumps(cfg, indent=2) + "\n")

def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output-dir", default=str(CHECKPOINT_DIR))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--max-minutes", type=float, default=30.0, help="stop training after this much wall time")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--hidden-size", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument(
        "--train-puzzles", type=int, default=3000,
        help="countdown training puzzles, from the train split (3,051 exist since the validation split was carved out "
        "of it; the shipped checkpoint was built from 3,400 puzzles of the old train split, validation included)",
    )
    ap.add_argument(
        "--task-mix", default=None,
        help="tasks to train on and their sampling weights, e.g. 'sudoku=1' or 'countdown=0.7,sudoku=0.3' "
        f"(default {','.join(f'{k}={v:g}' for k, v in TASK_MIX.items())}: the shipped model)",
    )
    ap.add_argument(
        "--sudoku-puzzles", type=int, default=None,
        help="sudoku training puzzles (default max(200, train-puzzles // 4), used only for the tokenizer corpus "
        "unless sudoku is in --task-mix)",
    )
    ap.add_argument("--eval-samples", type=int, default=200)
    ap.add_argument("--eval-split", default="test", choices=("validation", "test"),
                    help="split of the held-out evaluation printed at the end (one per trained task)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave default)")
    ap.add_argument(
        "--init-from", default=None,
        help="continue training from this checkpoint (its tokenizer and architecture are kept)",
    )
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from ...tasks import get_task

    t0 = time.time()
    mix = parse_task_mix(args.task_mix) if args.task_mix else dict(TASK_MIX)
    n_sudoku = args.sudoku_puzzles if args.sudoku_puzzles is not None else max(200, args.train_puzzles // 4)
    n_train = {"countdown": args.train_puzzles, "sudoku": n_sudoku}
    task_rows = {name: get_task(name).rows("train", n, seed=args.seed) for name, n in n_train.items()}
    if args.init_from:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.init_from)
    else:
        tokenizer = build_tokenizer(_corpus(task_rows), args.vocab_size)
    data = {}
    for name, rows in task_rows.items():
        if name not in mix:
            continue
        task = get_task(name)
        data[name] = encode_examples(tokenizer, rows, task.gen_length)
        print(f"[tiny] {name}: {len(data[name][0])} training examples, gen_length={task.gen_length}, "
              f"prompt ~{sum(map(len, data[name][0])) / max(1, len(data[name][0])):.0f} tokens")

    config = TinyDLMConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=int(args.hidden_size * 8 / 3 / 64 + 0.999) * 64,
        max_position_embeddings=512,
        mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = (
        TinyDLMForMaskedDiffusion.from_pretrained(args.init_from, dtype=torch.float32)
        if args.init_from
        else TinyDLMForMaskedDiffusion(config)
    )
    config = model.config
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[tiny] {n_params / 1e6:.2f} M parameters, vocab {len(tokenizer)}")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed)
    rng = random.Random(args.seed)
    names, weights = zip(*mix.items(), strict=True)
    deadline = time.time() + 60 * args.max_minutes
    model.train()
    step, ema = 0, None
    total_steps = args.steps
    for step in range(1, total_steps + 1):
        lr = args.lr * min(1.0, step / args.warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total_steps)))
        for g in opt.param_groups:
            g["lr"] = max(lr, args.lr * 0.02)
        name = rng.choices(names, weights)[0]
        prompts, answers = data[name]
        idx = [rng.randrange(len(prompts)) for _ in range(args.batch_size)]
        loss = sft_step(model, opt, prompts, answers, idx, tokenizer.pad_token_id, config.mask_token_id, gen)
        ema = loss if ema is None else 0.98 * ema + 0.02 * loss
        if step % 50 == 0 or step == 1:
            print(f"[tiny] step {step} loss {ema:.4f} lr {lr:.2e} {time.time() - t0:.0f}s", flush=True)
        if time.time() > deadline:
            print(f"[tiny] time budget reached at step {step}")
            break
    train_seconds = time.time() - t0
    model.eval()

    out = Path(args.output_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_portable_tokenizer_config(out)
    size_mb = (out / "model.safetensors").stat().st_size / 1e6
    info = {
        "parameters": n_params,
        "weights_mb": round(size_mb, 2),
        "train_steps": step,
        "train_seconds": round(train_seconds, 1),
        "batch_size": args.batch_size,
        "seed": args.seed,
        "final_loss_ema": round(ema, 4),
    }
    if args.task_mix:
        info["task_mix"] = mix
    try:
        from ...evaluation import evaluate

        for name in mix:
            res = evaluate(name, model_name_or_path=str(out), num_samples=args.eval_samples, seed=0,
                           split=args.eval_split)
            info[f"heldout_{name}_accuracy"] = res["accuracy"]
        if args.eval_split != "test":
            info["heldout_split"] = args.eval_split
    except ImportError as err:  # the evaluation module is optional while bootstrapping
        print(f"[tiny] skipping evaluation: {err}")
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    main()
