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

**Several lengths, the papers' protocol.** :func:`evaluate_lengths` evaluates the same rows at each of
``gen_lengths`` (model and data loaded once) and returns every result and their average, as the tables
of d1 / wd1 report them::

    from dlm_trl.evaluation import evaluate_lengths, format_table
    out = evaluate_lengths("gsm8k", protocol="d1", model_name_or_path="GSAI-ML/LLaDA-8B-Instruct")
    print(format_table(out["results"], average=out["average"]))

``protocol="d1"`` (:data:`EVAL_PROTOCOLS`; d1, arXiv 2504.12216, §4) is lengths 128/256/512, block 32,
``steps = gen_length / 2``, temperature 0 — the same for GSM8K, MATH, Countdown, Sudoku, HumanEval and
MBPP; explicit ``gen_lengths`` / ``block_length`` / ``steps`` / ``temperature`` override it, and every
other argument of :func:`evaluate` (the decoder: ``rollout``, ``transfer``, ``cache`` …) applies to every
length. Every length's sampler and the model's positions (``prompt + gen_length`` ≤ the model's
``max_position_embeddings``) are checked before anything is generated, so a bad length is one error, not
a crash after the first length; the embedded tiny model (512 positions) cannot run the 512 of d1.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .sampling import SamplerConfig, generate, rollout_overrides
from .sampling.guidance import schedule_name
from .tasks import DataSource, data_kwargs, get_task


def encode_prompts(tokenizer, prompts: list, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-template and left-pad prompts → ``(ids [B, P], attention_mask [B, P])``.

    A prompt is a list of chat messages (TRL's conversational format) or a plain string.
    """
    ids = prompt_token_ids(tokenizer, prompts)
    P = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([[pad] * (P - len(x)) + x for x in ids], device=device)
    attention = torch.tensor([[0] * (P - len(x)) + [1] * len(x) for x in ids], device=device)
    return input_ids, attention


def prompt_token_ids(tokenizer, prompts: list) -> list[list[int]]:
    """Token ids of each prompt as the sampler sees it (chat template with the generation prompt)."""
    ids = []
    for p in prompts:
        if isinstance(p, str):
            x = tokenizer(p, add_special_tokens=False)["input_ids"]
        else:
            x = tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True)
            if not isinstance(x, list):  # BatchEncoding in newer transformers
                x = x["input_ids"]
        ids.append(list(x))
    return ids


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
    cache_refresh: int | None = None, guidance_schedule: str = "constant", guidance_late_fraction: float = 0.5,
    guidance_rate_preserving: bool = False,
) -> SamplerConfig:
    """The evaluation sampler: the task's lengths, ``steps = gen_length / 2`` (d1), the family's rules,
    and the decoder of a ``rollout`` preset (:data:`~dlm_trl.sampling.ROLLOUT_PRESETS`) or of the explicit
    ``transfer`` / ``threshold`` / ``cache`` / ``cache_refresh`` (explicit values win); ``cfg_scale`` and the
    ``guidance_*`` options are :class:`SamplerConfig`'s classifier-free guidance (:mod:`dlm_trl.sampling.guidance`)."""
    t_task = get_task(task)
    gen_length = gen_length or t_task.gen_length
    if block_length is None and family != "dream":
        block_length = min(t_task.block_length, gen_length)  # Dream decodes in one block, as its own sampler
    nb = gen_length // (block_length or gen_length)
    steps = steps or max(nb, gen_length // 2 // nb * nb)
    overrides = rollout_overrides(rollout, transfer=transfer, threshold=threshold, cache=cache, cache_refresh=cache_refresh)
    overrides.update({k: v for k, v in (("remasking", remasking), ("schedule", schedule),
                                        ("block_length", block_length)) if v is not None})
    return SamplerConfig.for_family(
        family,
        gen_length=gen_length,
        steps=steps,
        temperature=temperature,
        cfg_scale=cfg_scale,
        guidance_schedule=guidance_schedule,
        guidance_late_fraction=guidance_late_fraction,
        guidance_rate_preserving=guidance_rate_preserving,
        **{k: v for k, v in overrides.items() if v is not None},
    )


@dataclass(frozen=True)
class EvalProtocol:
    """An evaluation protocol of the papers: the generation lengths reported, the block length,
    ``steps = steps_per_token * gen_length`` and the temperature, for every task of their tables."""

    name: str
    gen_lengths: tuple[int, ...]
    block_length: int
    temperature: float = 0.0
    steps_per_token: float = 0.5
    tasks: tuple[str, ...] = ("gsm8k", "math", "countdown", "sudoku", "humaneval", "mbpp")
    description: str = ""

    def steps(self, gen_length: int) -> int:
        return max(1, int(gen_length * self.steps_per_token))


#: Evaluation protocols by name (``evaluate_lengths(protocol=...)``, ``dlm-trl eval --protocol``).
EVAL_PROTOCOLS: dict[str, EvalProtocol] = {
    "d1": EvalProtocol(
        "d1", gen_lengths=(128, 256, 512), block_length=32, temperature=0.0, steps_per_token=0.5,
        description="d1 (arXiv 2504.12216) / wd1: lengths 128, 256, 512, block 32, steps = length / 2, greedy",
    ),
}


def get_protocol(name: str) -> EvalProtocol:
    if name not in EVAL_PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {name!r}; available: {', '.join(EVAL_PROTOCOLS)}")
    return EVAL_PROTOCOLS[name]


def parse_lengths(value: int | str | Sequence[int] | None) -> list[int] | None:
    """Generation lengths from an int, a list or a comma list such as ``"128,256,512"`` (repeats dropped)."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else ([value] if isinstance(value, int) else list(value))
    out: list[int] = []
    for item in items:
        try:
            n = int(str(item).strip())
        except ValueError:
            n = 0
        if n <= 0:
            raise ValueError(
                f"gen_length takes positive integers separated by commas (e.g. 128,256,512), got {value!r}"
            )
        if n not in out:
            out.append(n)
    if not out:
        raise ValueError("gen_length is empty; give one or more lengths, e.g. 128,256,512")
    return out


def sampler_configs_for(
    task: str, family: str, gen_lengths: Sequence[int] | None = None, *, protocol: str | None = None,
    block_length: int | None = None, steps: int | None = None, temperature: float | None = None, **decoder,
) -> list[SamplerConfig]:
    """The sampler of each generation length (:func:`sampler_config_for`): ``gen_lengths`` or the protocol's,
    else the task's default length; the protocol's block length, ``steps`` and temperature unless given.
    ``decoder``: the other keyword arguments of :func:`sampler_config_for`."""
    proto = get_protocol(protocol) if protocol else None
    lengths = list(gen_lengths) if gen_lengths else (list(proto.gen_lengths) if proto else [None])
    if proto is not None:
        block_length = proto.block_length if block_length is None else block_length
        temperature = proto.temperature if temperature is None else temperature
    configs = []
    for L in lengths:
        n = steps
        if n is None and proto is not None and L % (block_length or L) == 0:
            nb = L // (block_length or L)
            n = max(nb, proto.steps(L) // nb * nb)
        configs.append(sampler_config_for(
            task, family, gen_length=L, block_length=block_length, steps=n,
            temperature=0.0 if temperature is None else temperature, **decoder))
    return configs


def max_positions(model) -> int | None:
    """The positions the model declares (``max_position_embeddings`` / ``max_sequence_length`` /
    ``n_positions`` of its config), None when it declares none."""
    from .models.adapters import unwrap_module

    config = getattr(unwrap_module(model), "config", None)
    for name in ("max_position_embeddings", "max_sequence_length", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_positions(model, tokenizer, rows: list[dict], gen_lengths: Sequence[int], block_length: int | None = None):
    """Raise one clear ``ValueError`` when the longest prompt + a generation length exceeds the model's positions."""
    limit = max_positions(model)
    if limit is None or not rows:
        return
    P = max(len(x) for x in prompt_token_ids(tokenizer, [r["prompt"] for r in rows]))
    for L in gen_lengths:
        if P + L > limit:
            room = limit - P
            fit = room // block_length * block_length if block_length else room
            hint = (f"use a gen_length ≤ {fit}" + (f" (a multiple of block_length={block_length})" if block_length else "")
                    if fit > 0 else "shorten the prompts")
            raise ValueError(
                f"gen_length={L} with the longest prompt ({P} tokens) needs {P + L} positions, more than the "
                f"model's {limit} (max_position_embeddings); {hint}, or evaluate a model with more positions"
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
    guidance_schedule: str = "constant",
    guidance_late_fraction: float = 0.5,
    guidance_rate_preserving: bool = False,
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
    (:func:`sampler_config_for`); ``cfg_scale`` / ``guidance_schedule`` / ``guidance_late_fraction`` /
    ``guidance_rate_preserving`` the classifier-free guidance (:mod:`dlm_trl.sampling.guidance`).

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
    length = gen_length or t_task.gen_length
    check_positions(model, tokenizer, rows, [length], block_length or min(t_task.block_length, length))
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
            guidance_schedule=guidance_schedule, guidance_late_fraction=guidance_late_fraction,
            guidance_rate_preserving=guidance_rate_preserving, rollout=rollout, transfer=transfer, threshold=threshold, cache=cache, cache_refresh=cache_refresh,
        )
        was_training = getattr(dlm.module, "training", False)
        if hasattr(dlm.module, "eval"):
            dlm.module.eval()
        bar = tqdm(total=len(my_rows), desc=f"eval {task} ({split}, L={config.gen_length})", disable=not (progress and main), unit="sample")
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
            "guidance_schedule": schedule_name(config.guidance_schedule),
            "guidance_late_fraction": config.guidance_late_fraction,
            "guidance_rate_preserving": config.guidance_rate_preserving,
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


def evaluate_lengths(
    task: str = "countdown",
    gen_lengths: int | str | Sequence[int] | None = None,
    *,
    protocol: str | None = None,
    block_length: int | None = None,
    steps: int | None = None,
    temperature: float | None = None,
    model_name_or_path: str | None = None,
    model=None,
    tokenizer=None,
    num_samples: int = 200,
    seed: int = 0,
    split: str = "test",
    device: str | None = None,
    load_kwargs: dict[str, Any] | None = None,
    data_path: str | None = None,
    dataset: DataSource | None = None,
    rows: list[dict] | None = None,
    accelerator=None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`evaluate` at each of ``gen_lengths`` (ints or a comma list; default the ``protocol``'s, else the
    task's length) on the same rows, the model and the data loaded once. ``protocol`` (:data:`EVAL_PROTOCOLS`,
    e.g. ``"d1"``) gives the lengths, block length, ``steps`` and temperature that are not given explicitly;
    ``kwargs`` (decoder, batch size, ``return_samples`` …) go to every :func:`evaluate` call. Every length's
    sampler and the model's positions are checked before the first generation.

    Returns ``{"task", "model", "split", "num_samples", "seed", "protocol", "gen_lengths", "results",
    "average"}``: ``results`` holds :func:`evaluate`'s dict for each length (with ``"protocol"`` when one was
    given) and ``average`` the mean over lengths of accuracy, mean reward, seconds, tokens/s and NFE/sample.
    """
    from .models import DLM, load

    lengths = parse_lengths(gen_lengths)
    if model is None:
        if accelerator is not None:
            raise ValueError("a distributed evaluation needs the trainer's model (model=trainer.model_wrapped)")
        model_name_or_path = model_name_or_path or "tiny"
        model, tokenizer = load(model_name_or_path, device=device, **(load_kwargs or {}))
    if tokenizer is None:
        raise ValueError("pass the tokenizer together with the model")
    t_task = get_task(task)
    if rows is None:
        rows = t_task.rows(split, num_samples, seed=seed, **data_kwargs(task, data_path, dataset))
    if isinstance(model, DLM):
        family = model.family
    else:
        from .models.adapters import detect_family, unwrap_module

        family = (load_kwargs or {}).get("family") or detect_family(getattr(unwrap_module(model), "config", None))
    decoder = {k: kwargs[k] for k in ("remasking", "schedule", "cfg_scale", "guidance_schedule",
                                      "guidance_late_fraction", "guidance_rate_preserving", "rollout", "transfer",
                                      "threshold", "cache", "cache_refresh") if k in kwargs}
    configs = sampler_configs_for(task, family, lengths, protocol=protocol, block_length=block_length, steps=steps,
                                  temperature=temperature, **decoder)  # every length's sampler is valid
    blocks = {c.block_length for c in configs}
    block = blocks.pop() if len(blocks) == 1 and all(c.block_length < c.gen_length for c in configs) else None
    check_positions(model, tokenizer, rows, [c.gen_length for c in configs], block)
    results = []
    for c in configs:  # the resolved lengths, block, steps and temperature (the decoder is resolved again)
        res = evaluate(
            task, model_name_or_path=model_name_or_path, model=model, tokenizer=tokenizer, seed=seed, split=split,
            gen_length=c.gen_length, block_length=c.block_length, steps=c.steps, temperature=c.temperature,
            load_kwargs=load_kwargs, rows=rows, accelerator=accelerator, **kwargs,
        )
        if protocol:
            res["protocol"] = protocol
        results.append(res)
    keys = {"accuracy": None, "mean_reward": None, "seconds": 2, "tokens_per_second": 1, "nfe_per_sample": 2}
    average: dict[str, Any] = {"gen_length": "average", "num_samples": len(rows)}
    for k, digits in keys.items():
        mean = sum(r[k] for r in results) / len(results)
        average[k] = mean if digits is None else round(mean, digits)
    return {
        "task": task,
        "model": results[0]["model"],
        "split": split,
        "num_samples": len(rows),
        "seed": seed,
        "protocol": protocol,
        "gen_lengths": [r["sampler"]["gen_length"] for r in results],
        "results": results,
        "average": average,
    }


def format_table(results: list[dict[str, Any]], average: dict[str, Any] | None = None) -> str:
    """A markdown table of evaluation results; with ``average`` (:func:`evaluate_lengths`) a generation-length
    column and a last row ``average``."""
    by_length = average is not None
    head = "| task | model |" + (" gen length |" if by_length else "")
    lines = [
        head + " samples | accuracy | mean reward | seconds | tokens/s | NFE/sample |",
        "|---|---|" + ("---|" if by_length else "") + "---|---|---|---|---|---|",
    ]
    rows = [(r, r["sampler"]["gen_length"] if by_length else None) for r in results]
    if by_length:
        rows.append(({**average, "task": results[0]["task"], "model": results[0]["model"]}, "average"))
    for r, length in rows:
        lines.append(
            f"| {r['task']} | {r['model']} |" + (f" {length} |" if by_length else "")
            + f" {r['num_samples']} | {100 * r['accuracy']:.1f}% | {r['mean_reward']:.3f} | {r['seconds']:.1f} | "
            f"{r['tokens_per_second']:.0f} | {r.get('nfe_per_sample', '')} |"
        )
    return "\n".join(lines)
