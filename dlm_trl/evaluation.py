"""Generate-and-verify evaluation of a diffusion LM on a task.

Defaults follow the d1 evaluation protocol: temperature 0, ``steps = gen_length / 2``;
the generation and block lengths default to the task's settings for the embedded model.
Row ``i`` of the evaluation set gets its own generator seeded from ``(seed, i)``, so
results do not depend on the batch size and are identical on rerun.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from tqdm.auto import tqdm

from .sampling import SamplerConfig, generate
from .tasks import FILE_TASKS, get_task


def encode_prompts(tokenizer, prompts: list, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-template and left-pad prompts → ``(ids [B, P], attention_mask [B, P])``.

    A prompt is a list of chat messages (TRL's conversational format) or a plain string.
    """
    ids = []
    for p in prompts:
        if isinstance(p, str):
            x = tokenizer(p, add_special_tokens=False)["input_ids"]
        else:
            x = tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True)
            if not isinstance(x, list):  # BatchEncoding in newer transformers
                x = x["input_ids"]
        ids.append(list(x))
    P = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([[pad] * (P - len(x)) + x for x in ids], device=device)
    attention = torch.tensor([[0] * (P - len(x)) + [1] * len(x) for x in ids], device=device)
    return input_ids, attention


def decode_completions(tokenizer, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[str]:
    """Text of each completion up to (not including) its first EOS."""
    out = []
    for ids, m in zip(completion_ids.tolist(), completion_mask.tolist(), strict=True):
        n = int(sum(m))
        toks = ids[:n]
        if toks and toks[-1] == tokenizer.eos_token_id:
            toks = toks[:-1]
        out.append(tokenizer.decode(toks, skip_special_tokens=True))
    return out


def evaluate(
    task: str = "countdown",
    *,
    model_name_or_path: str | None = None,
    model=None,
    tokenizer=None,
    num_samples: int = 200,
    seed: int = 0,
    split: str = "test",
    gen_length: int | None = None,
    block_length: int | None = None,
    steps: int | None = None,
    temperature: float = 0.0,
    remasking: str | None = None,
    schedule: str | None = None,
    cfg_scale: float = 0.0,
    batch_size: int = 50,
    device: str | None = None,
    load_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    return_samples: bool = False,
    data_path: str | None = None,
) -> dict[str, Any]:
    """Accuracy of ``model`` (a :class:`~dlm_trl.models.DLM`, or loaded from
    ``model_name_or_path`` with ``load_kwargs`` passed to :func:`dlm_trl.models.load`) on
    ``num_samples`` held-out rows of ``task``. ``remasking`` / ``schedule`` left unset take the
    model family's defaults (:meth:`SamplerConfig.for_family`)."""
    from .models import DLM, load

    t_task = get_task(task)
    if model is None:
        model_name_or_path = model_name_or_path or "tiny"
        model, tokenizer = load(model_name_or_path, device=device, **(load_kwargs or {}))
    elif not isinstance(model, DLM):
        lk = load_kwargs or {}
        model = DLM.wrap(model, tokenizer=tokenizer, family=lk.get("family"), mask_token_id=lk.get("mask_token_id"))
    if tokenizer is None:
        raise ValueError("pass the tokenizer together with the model")
    gen_length = gen_length or t_task.gen_length
    if block_length is None and model.family != "dream":
        block_length = min(t_task.block_length, gen_length)  # Dream decodes in one block, as its own sampler
    nb = gen_length // (block_length or gen_length)
    steps = steps or max(nb, gen_length // 2 // nb * nb)
    overrides = {"remasking": remasking, "schedule": schedule, "block_length": block_length}
    config = SamplerConfig.for_family(
        model.family,
        gen_length=gen_length,
        steps=steps,
        temperature=temperature,
        cfg_scale=cfg_scale,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    block_length = config.block_length
    kwargs = {"data_path": data_path} if task in FILE_TASKS and data_path else {}
    rows = t_task.rows(split, num_samples, seed=seed, **kwargs)
    dev = model.device
    was_training = getattr(model.module, "training", False)
    if hasattr(model.module, "eval"):
        model.module.eval()
    t0 = time.time()
    completions, gen_tokens = [], 0
    bar = tqdm(total=len(rows), desc=f"eval {task}", disable=not progress, unit="sample")
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        ids, att = encode_prompts(tokenizer, [r["prompt"] for r in chunk], device=dev)
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + start + i) for i in range(len(chunk))]
        out = generate(model, ids, config=config, prompt_attention_mask=att, generator=gens)
        completions += decode_completions(tokenizer, out.completion_ids, out.completion_mask)
        gen_tokens += out.completion_ids.numel()
        bar.update(len(chunk))
    bar.close()
    seconds = time.time() - t0
    if was_training:
        model.module.train()
    scores = t_task.score(completions, rows)
    correct = [s >= 1.0 - 1e-9 for s in scores]
    result: dict[str, Any] = {
        "task": task,
        "model": model_name_or_path if model_name_or_path else "in-memory",
        "split": split,
        "num_samples": len(rows),
        "accuracy": sum(correct) / max(1, len(rows)),
        "mean_reward": sum(scores) / max(1, len(rows)),
        "seconds": round(seconds, 2),
        "tokens_per_second": round(gen_tokens / max(seconds, 1e-9), 1),
        "seed": seed,
        "sampler": {
            "gen_length": gen_length,
            "block_length": block_length,
            "steps": steps,
            "temperature": temperature,
            "remasking": config.remasking,
            "schedule": config.schedule,
            "cfg_scale": cfg_scale,
        },
    }
    if return_samples:
        result["samples"] = [
            {"prompt": r["prompt"][-1]["content"] if isinstance(r["prompt"], list) else r["prompt"],
             "completion": c, "reward": s, "correct": ok}
            for r, c, s, ok in zip(rows, completions, scores, correct, strict=True)
        ]
    return result


def format_table(results: list[dict[str, Any]]) -> str:
    """A markdown table of evaluation results."""
    lines = [
        "| task | model | samples | accuracy | mean reward | seconds | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['task']} | {r['model']} | {r['num_samples']} | {100 * r['accuracy']:.1f}% | "
            f"{r['mean_reward']:.3f} | {r['seconds']:.1f} | {r['tokens_per_second']:.0f} |"
        )
    return "\n".join(lines)
