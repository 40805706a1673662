"""Generate-and-verify evaluation of a diffusion LM on a task.

Defaults follow the d1 evaluation protocol: temperature 0, ``steps = gen_length / 2``;
the generation and block lengths default to the task's settings for the embedded model.
Row ``i`` of the evaluation set gets its own generator seeded from ``(seed, i)``, so
results do not depend on the batch size and are identical on rerun.

**Distributed.** With ``accelerator=`` (e.g. a trainer's, and ``model`` its ``model_wrapped``),
every process evaluates its own shard — row ``i`` on rank ``i % N`` — with the parameters gathered
once for the whole evaluation (TRL's ``unwrap_model_for_generation``, which every rank must enter:
under DeepSpeed ZeRO-3 it is a collective), and the per-row results are gathered on every rank
(``accelerate.utils.gather_object``). Every rank makes the same number of sampler calls of the same
batch size (the last shard is padded with a dummy row whose result is dropped), so collectives
inside the model line up. Because row ``i`` keeps its generator and a row's output does not depend
on the rows batched with it, the accuracy equals the single-process one.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from .sampling import SamplerConfig, generate, rollout_overrides
from .tasks import DataSource, data_kwargs, get_task


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


def sampler_config_for(
    task: str, family: str, *, gen_length: int | None = None, block_length: int | None = None,
    steps: int | None = None, temperature: float = 0.0, remasking: str | None = None,
    schedule: str | None = None, cfg_scale: float = 0.0, rollout: str | None = None,
    transfer: str | None = None, threshold: float | None = None, cache: str | None = None,
    cache_refresh: int | None = None,
) -> SamplerConfig:
    """The evaluation sampler: the task's lengths, ``steps = gen_length / 2`` (d1), the family's rules,
    and the decoder of a ``rollout`` preset (:data:`~dlm_trl.sampling.ROLLOUT_PRESETS`) or of the explicit
    ``transfer`` / ``threshold`` / ``cache`` / ``cache_refresh`` (explicit values win)."""
    t_task = get_task(task)
    gen_length = gen_length or t_task.gen_length
    if block_length is None and family != "dream":
        block_length = min(t_task.block_length, gen_length)  # Dream decodes in one block, as its own sampler
    nb = gen_length // (block_length or gen_length)
    steps = steps or max(nb, gen_length // 2 // nb * nb)
    overrides = {"remasking": remasking, "schedule": schedule, "block_length": block_length}
    overrides.update(rollout_overrides(
        rollout, transfer=transfer, threshold=threshold, cache=cache, cache_refresh=cache_refresh))
    return SamplerConfig.for_family(
        family,
        gen_length=gen_length,
        steps=steps,
        temperature=temperature,
        cfg_scale=cfg_scale,
        **{k: v for k, v in overrides.items() if v is not None},
    )


def row_generator(seed: int, index: int) -> torch.Generator:
    """The generator of evaluation row ``index`` (the same whatever the batch, process or rank)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def sample_rows(
    model, tokenizer, rows: list[dict], indices: list[int], config: SamplerConfig, *, seed: int,
    batch_size: int = 50, bar=None, sync_ranks: bool = False, nfe: list | None = None,
) -> tuple[list[str], int]:
    """Completions of ``rows`` (row ``k`` sampled with :func:`row_generator` ``(seed, indices[k])``) in
    ``ceil(len(rows) / batch_size)`` sampler calls; returns ``(completions, generated tokens)``. Each row's
    number of forward passes is appended to ``nfe`` when given. ``sync_ranks``: see :func:`generate`."""
    completions, gen_tokens = [], 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        ids, att = encode_prompts(tokenizer, [r["prompt"] for r in chunk], device=model.device)
        gens = [row_generator(seed, i) for i in indices[start : start + batch_size]]
        out = generate(model, ids, config=config, prompt_attention_mask=att, generator=gens, sync_ranks=sync_ranks)
        if nfe is not None:
            nfe += out.row_nfe.tolist()
        completions += decode_completions(tokenizer, out.completion_ids, out.completion_mask)
        gen_tokens += out.completion_ids.numel()
        if bar is not None:
            bar.update(len(chunk))
    return completions, gen_tokens


def shard(num_rows: int, rank: int, world: int) -> list[int]:
    """Row indices of ``rank``: ``rank, rank + world, ...``, padded with ``-1`` (a dummy row) so that
    every rank gets ``ceil(num_rows / world)``."""
    mine = list(range(rank, num_rows, world))
    return mine + [-1] * (-(-num_rows // world) - len(mine))


@contextlib.contextmanager
def _eval_model(model, accelerator, gather_deepspeed3_params: bool, gradient_checkpointing_kwargs):
    """The bare model to sample with: ``model`` itself without an accelerator; with one, TRL's
    ``unwrap_model_for_generation`` (DDP / DeepSpeed unwrapped; ZeRO-3 parameters gathered once)."""
    if accelerator is None:
        yield model
        return
    from trl.distributed import DistributedBackend
    from trl.models import unwrap_model_for_generation

    with (
        unwrap_model_for_generation(
            model, accelerator, gather_deepspeed3_params=gather_deepspeed3_params,
            gradient_checkpointing_kwargs=gradient_checkpointing_kwargs,
        ) as unwrapped,
        DistributedBackend(accelerator).summon_full_params(model, recurse=False),  # FSDP, as TRL's rollouts
    ):
        yield unwrapped


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
    rollout: str | None = None,
    transfer: str | None = None,
    threshold: float | None = None,
    cache: str | None = None,
    cache_refresh: int | None = None,
    batch_size: int = 50,
    device: str | None = None,
    load_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    return_samples: bool = False,
    data_path: str | None = None,
    dataset: DataSource | None = None,
    rows: list[dict] | None = None,
    accelerator=None,
    gather_deepspeed3_params: bool = True,
    gradient_checkpointing_kwargs: dict | None = None,
) -> dict[str, Any]:
    """Accuracy of ``model`` (a :class:`~dlm_trl.models.DLM`, or loaded from
    ``model_name_or_path`` with ``load_kwargs`` passed to :func:`dlm_trl.models.load`) on
    ``num_samples`` rows of ``split`` of ``task`` (or on ``rows`` when given); a file task reads
    ``dataset`` / ``data_path`` (:mod:`dlm_trl.tasks.sources`). ``remasking`` /
    ``schedule`` left unset take the model family's defaults (:meth:`SamplerConfig.for_family`);
    ``rollout`` / ``transfer`` / ``threshold`` / ``cache`` / ``cache_refresh`` choose the decoder
    (:func:`sampler_config_for`).

    ``accelerator``: evaluate distributed over its processes (module docstring). ``model`` is then
    what the trainer trains (``trainer.model_wrapped``: a DDP module, a DeepSpeed engine, a PEFT
    model or the bare model), every process must call this function with the same arguments, and every
    process returns the same result. ``gather_deepspeed3_params`` / ``gradient_checkpointing_kwargs``
    are passed to ``unwrap_model_for_generation`` (as the trainer's ``ds3_gather_for_generation`` and
    ``gradient_checkpointing_kwargs``).
    """
    from .models import DLM, load

    if model is None:
        if accelerator is not None:
            raise ValueError("a distributed evaluation needs the trainer's model (model=trainer.model_wrapped)")
        model_name_or_path = model_name_or_path or "tiny"
        model, tokenizer = load(model_name_or_path, device=device, **(load_kwargs or {}))
    if tokenizer is None:
        raise ValueError("pass the tokenizer together with the model")
    lk = load_kwargs or {}
    if rows is None:
        t_task = get_task(task)
        kwargs = data_kwargs(task, data_path, dataset)
        rows = t_task.rows(split, num_samples, seed=seed, **kwargs)
    else:
        t_task = get_task(task)
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    indices = shard(len(rows), rank, world)
    my_rows = [rows[i] if i >= 0 else rows[0] for i in indices]
    main = accelerator is None or accelerator.is_main_process
    t0 = time.time()
    with _eval_model(model, accelerator, gather_deepspeed3_params, gradient_checkpointing_kwargs) as bare, \
            torch.no_grad():
        dlm = bare if isinstance(bare, DLM) else DLM.wrap(
            bare, tokenizer=tokenizer, family=lk.get("family"), mask_token_id=lk.get("mask_token_id"))
        config = sampler_config_for(
            task, dlm.family, gen_length=gen_length, block_length=block_length, steps=steps,
            temperature=temperature, remasking=remasking, schedule=schedule, cfg_scale=cfg_scale,
            rollout=rollout, transfer=transfer, threshold=threshold, cache=cache, cache_refresh=cache_refresh,
        )
        was_training = getattr(dlm.module, "training", False)
        if hasattr(dlm.module, "eval"):
            dlm.module.eval()
        bar = tqdm(total=len(my_rows), desc=f"eval {task} ({split})", disable=not (progress and main), unit="sample")
        try:
            row_nfe: list[int] = []
            completions, gen_tokens = sample_rows(
                dlm, tokenizer, my_rows, indices, config, seed=seed, batch_size=batch_size, bar=bar,
                sync_ranks=world > 1, nfe=row_nfe)
        finally:
            bar.close()
            if was_training:
                dlm.module.train()
    real = [k for k, i in enumerate(indices) if i >= 0]
    scores = t_task.score([completions[k] for k in real], [my_rows[k] for k in real]) if real else []
    local = [(indices[k], completions[k], s) for k, s in zip(real, scores, strict=True)]
    if accelerator is not None:
        from accelerate.utils import gather_object

        local = gather_object(local + [(-1, "", float(gen_tokens)), (-2, "", float(sum(row_nfe)))])
        gen_tokens = sum(int(s) for i, _, s in local if i == -1)
        nfe_total = sum(s for i, _, s in local if i == -2)
        local = [x for x in local if x[0] >= 0]
    else:
        nfe_total = float(sum(row_nfe))
    local.sort(key=lambda x: x[0])
    if [x[0] for x in local] != list(range(len(rows))):
        raise RuntimeError(f"distributed evaluation lost rows: got {len(local)} results for {len(rows)} rows")
    completions = [c for _, c, _ in local]
    scores = [s for _, _, s in local]
    seconds = time.time() - t0
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
        "processes": world,
        "sampler": {
            "gen_length": config.gen_length,
            "block_length": config.block_length,
            "steps": config.steps,
            "temperature": temperature,
            "remasking": config.remasking,
            "schedule": config.schedule,
            "cfg_scale": cfg_scale,
            "transfer": config.transfer,
            "threshold": config.threshold if config.transfer == "threshold" else None,
            "cache": config.cache,
            "cache_refresh": config.cache_refresh,
        },
        "nfe_per_sample": round(nfe_total / max(1, len(my_rows) * world), 2),
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
        "| task | model | samples | accuracy | mean reward | seconds | tokens/s | NFE/sample |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['task']} | {r['model']} | {r['num_samples']} | {100 * r['accuracy']:.1f}% | "
            f"{r['mean_reward']:.3f} | {r['seconds']:.1f} | {r['tokens_per_second']:.0f} | {r.get('nfe_per_sample', '')} |"
        )
    return "\n".join(lines)
