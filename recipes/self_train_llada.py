"""Recursive self-training of a LLaDA-style diffusion LM: sample → verify → select → fine-tune, K rounds.

Training recursively on self-generated data drifts from generalisation to memorisation as the entropy of
the synthetic data falls; keeping a high-entropy subset counters it (Shi et al., arXiv 2509.16499). This
recipe runs that loop on the embedded tiny model (offline, CPU) with the selection as the only variable::

    python recipes/self_train_llada.py --selection entropy            # none | random | entropy
    python recipes/self_train_llada.py --selection random --rounds 6 --keep 128 --output_dir outputs/st_random

Every round ``r = 1..rounds``, on the model of round ``r − 1`` (the tiny model for ``r = 1``):

1. **sample** ``samples_per_prompt`` completions at temperature 1 (the ``fast`` sampler preset) for
   ``prompts_per_round`` fresh training prompts (all rounds' prompts are drawn at once, seeded, and split, so
   no prompt recurs);
2. **verify** with the task's reward: a completion is kept in the pool when its reward ≥ ``success_reward``;
3. **select** ``keep`` samples of the verified pool (this round's, or every round's so far with
   ``--accumulate``) with :func:`dlm_trl.selection.select` on hashed n-gram features of the completion token
   ids — the same count for every ``selection``; when fewer are verified, all are kept (``kept_all_verified``);
4. **fine-tune** ``sft_steps`` AdamW steps of LLaDA's masked-diffusion SFT loss
   (:func:`dlm_trl.masking.sft_loss`, the loss the tiny model was trained with: ``t ~ U(eps, 1]`` per row,
   each completion token masked with probability ``t``, the masked tokens' cross-entropy weighted ``1/t`` and
   normalised by the completion length; completions EOS-padded to ``gen_length``) on the kept
   (prompt, completion) pairs, in batches of ``sft_batch_size``;
5. **measure**: greedy validation accuracy (``val_samples`` prompts of the validation split; test accuracy
   only before round 1 and after the last one unless ``--test_every_round``: nothing is chosen on test);
   the entropy of the generated data (n-gram entropy n = 1, 2, distinct-2 and distinct fraction of *all*
   completions of the round, and of the kept set); and memorisation (below).

**Memorisation** (:func:`dlm_trl.selection.nn_distance` semantics: ``1 − cos`` of hashed uni+bigram count
features of the completion token ids; a *near copy* is a distance below ``0.05``):

* ``mem_self_*`` — this round's generated completions (fresh prompts) against everything the model was
  fine-tuned on in earlier rounds (the paper's notion: the model reproduces its synthetic training set);
  ``None`` in round 1;
* ``mem_gold_*`` — the generated and the kept completions against the task's gold solutions (``reference``
  column) of all the run's training prompts *other than their own prompt* (the own-prompt gold is left out,
  else a correct answer would count as a copy); these are train-split solutions, i.e. the data the tiny
  model was SFT-trained on (``dlm_trl/models/tiny/train.py``). Tasks without a ``reference`` report ``None``.

Outputs in ``output_dir``: ``report.json`` (settings, the starting model's accuracy, one dict per round,
including the indices kept) and ``report.png`` (validation accuracy, entropy, memorisation over rounds); a
table row is printed per round. ``main(argv)`` returns the report. Unmeasured at the defaults so far
(``benchmarks/self_train.py`` compares the three selections).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from dlm_trl.sampling._names import _choice_error  # noqa: E402

SELECTIONS = ("none", "random", "entropy")
NEAR_COPY = 0.05  # nn_distance's default threshold


@dataclass
class SelfTrainArguments:
    """Options of the recursive self-training recipe (defaults: the embedded tiny model on 2 CPU cores)."""

    model_name_or_path: str = field(default="tiny", metadata={"help": "Model to start from (tiny = embedded)."})
    task: str = field(default="countdown", metadata={"help": "Task (dlm_trl.tasks); its train split is sampled."})
    selection: str = field(default="entropy", metadata={"help": "Which verified samples to keep: none | random | entropy."})
    rounds: int = field(default=4, metadata={"help": "Rounds of sample → verify → select → fine-tune."})
    prompts_per_round: int = field(default=256, metadata={"help": "Fresh training prompts sampled per round."})
    samples_per_prompt: int = field(default=4, metadata={"help": "Completions per prompt (temperature 1)."})
    keep: int = field(default=128, metadata={"help": "Samples kept per round (all verified ones when fewer)."})
    accumulate: bool = field(default=False, metadata={"help": "Select from every round's verified samples so far."})
    success_reward: float = field(default=1.0, metadata={"help": "A completion is verified when reward ≥ this."})
    sft_steps: int = field(default=60, metadata={"help": "AdamW steps of the SFT loss per round."})
    sft_batch_size: int = field(default=16, metadata={"help": "(prompt, completion) pairs per SFT step."})
    learning_rate: float = field(default=5e-5, metadata={"help": "AdamW learning rate (constant; new optimizer per round)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the self-generated data."})
    rollout: str = field(default="fast", metadata={"help": "Sampler preset of the self-generated data (plain | fast)."})
    sample_batch_size: int = field(default=64, metadata={"help": "Rows per sampler call."})
    rollout_autocast_dtype: str | None = field(
        default="auto", metadata={"help": "Autocast dtype of sampling on CPU: auto (bf16 where native), bfloat16, none."}
    )
    val_samples: int = field(default=200, metadata={"help": "Validation prompts, greedy, at the start and every round."})
    eval_samples: int = field(default=400, metadata={"help": "Test prompts, greedy, before round 1 and after the last (0: none)."})
    test_every_round: bool = field(default=False, metadata={"help": "Also evaluate test after every round (reported only)."})
    eval_seed: int = field(default=0, metadata={"help": "Seed of the validation and test prompts."})
    eval_batch_size: int = field(default=50, metadata={"help": "Rows per sampler call in the evaluations."})
    seed: int = field(default=0, metadata={"help": "Seed of the prompts, sampling, selection and SFT masks."})
    output_dir: str = field(default="outputs/self_train_tiny", metadata={"help": "Where report.json / report.png go."})
    torch_threads: int | None = field(default=None, metadata={"help": "torch threads (default: the cores; 0 = torch's)."})
    progress: bool = field(default=True, metadata={"help": "Show tqdm progress bars."})

    def __post_init__(self):
        if self.selection not in SELECTIONS:
            raise _choice_error("selection", self.selection, SELECTIONS)
        for name in ("rounds", "keep", "prompts_per_round", "samples_per_prompt", "sft_batch_size",
                     "sample_batch_size", "eval_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("sft_steps", "val_samples", "eval_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 for self-generated data, got {self.temperature!r}")
        from dlm_trl.sampling import ROLLOUT_PRESETS
        from dlm_trl.tasks import TASKS

        if self.task not in TASKS:
            raise _choice_error("task", self.task, sorted(TASKS))
        if self.rollout not in ROLLOUT_PRESETS:
            raise _choice_error("rollout", self.rollout, sorted(ROLLOUT_PRESETS))


# ---------------------------------------------------------------------------------------------- pieces


def sample_completions(dlm, tokenizer, rows, args: SelfTrainArguments, round_seed: int, *, desc: str = "sample"):
    """``samples_per_prompt`` completions per row at ``temperature`` → list of dicts
    ``{row, sample, completion, ids}`` (``ids``: the completion's token ids up to, not including, its first EOS).
    Sample ``j`` of row ``i`` has its own generator seeded from ``(round_seed, i·S + j)``, so the data do not
    depend on the batch size."""
    from dlm_trl.evaluation import decode_completions, encode_prompts, row_generator, sampler_config_for
    from dlm_trl.sampling import generate
    from dlm_trl.trainers.recipe_utils import autocast_context

    config = sampler_config_for(args.task, dlm.family, temperature=args.temperature, rollout=args.rollout)
    S = args.samples_per_prompt
    flat = [(i, j) for i in range(len(rows)) for j in range(S)]
    eos = tokenizer.eos_token_id
    out = []
    bar = tqdm(total=len(flat), desc=desc, unit="sample", disable=not args.progress)
    was_training = dlm.module.training
    dlm.module.eval()
    try:
        for start in range(0, len(flat), args.sample_batch_size):
            chunk = flat[start : start + args.sample_batch_size]
            ids, att = encode_prompts(tokenizer, [rows[i]["prompt"] for i, _ in chunk], device=dlm.device)
            gens = [row_generator(round_seed, i * S + j) for i, j in chunk]
            with torch.no_grad(), autocast_context(args.rollout_autocast_dtype):
                res = generate(dlm, ids, config=config, prompt_attention_mask=att, generator=gens)
            texts = decode_completions(tokenizer, res.completion_ids, res.completion_mask)
            for (i, j), text, cids, cmask in zip(chunk, texts, res.completion_ids.tolist(),
                                                 res.completion_mask.tolist(), strict=True):
                toks = cids[: int(sum(cmask))]
                if toks and toks[-1] == eos:
                    toks = toks[:-1]
                out.append({"row": i, "sample": j, "completion": text, "ids": toks})
            bar.update(len(chunk))
    finally:
        bar.close()
        dlm.module.train(was_training)
    return out, config


def verify(task, rows, samples, success_reward: float) -> list[float]:
    """The task's reward of every sample (for its own row)."""
    scores = task.score([s["completion"] for s in samples], [rows[s["row"]] for s in samples])
    for s, r in zip(samples, scores, strict=True):
        s["reward"] = r
        s["verified"] = r >= success_reward - 1e-9
    return scores


def sft_examples(tokenizer, pairs, gen_length: int) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids with the chat template, completion ids + EOS, EOS-padded to ``gen_length``) per pair, as the
    tiny model's SFT data (:func:`dlm_trl.models.tiny.train.encode_examples`)."""
    from dlm_trl.evaluation import prompt_token_ids

    eos = tokenizer.eos_token_id
    prompts = prompt_token_ids(tokenizer, [p for p, _ in pairs])
    answers = []
    for _, ids in pairs:
        a = list(ids)[: gen_length - 1] + [eos]
        answers.append(a + [eos] * (gen_length - len(a)))
    return prompts, answers


def fine_tune(module, tokenizer, prompts, answers, *, steps: int, batch_size: int, lr: float, weight_decay: float,
              max_grad_norm: float, seed: int, mask_token_id: int) -> list[float]:
    """``steps`` AdamW steps of LLaDA's SFT loss (:func:`dlm_trl.models.tiny.train.sft_step`) on the pairs, batches drawn
    without replacement (reshuffled every epoch) from a seeded generator; returns the loss of every step."""
    from dlm_trl.models.tiny.train import sft_step

    if steps == 0 or not prompts:
        return []
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.98),
                            weight_decay=weight_decay)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    module.train()
    losses, order = [], []
    for _ in range(steps):
        idx = []
        while len(idx) < min(batch_size, len(prompts)):
            if not order:
                order = torch.randperm(len(prompts), generator=gen).tolist()
            idx.append(order.pop())
        losses.append(sft_step(module, opt, prompts, answers, idx, pad, mask_token_id, gen, max_grad_norm))
    module.eval()
    return losses


def select_kept(pool: list[dict], keep: int, method: str, seed: int) -> list[int]:
    """Indices into ``pool`` of the kept samples: ``min(keep, len(pool))`` of them."""
    from dlm_trl.selection import select

    return select([s["ids"] for s in pool], keep, method=method, features="ngram", seed=seed)


def diversity(samples: list[list[int]]) -> dict:
    from dlm_trl.selection import distinct_fraction, distinct_n, ngram_entropy

    return {
        "entropy_1": round(ngram_entropy(samples, 1), 4),
        "entropy_2": round(ngram_entropy(samples, 2), 4),
        "distinct_2": round(distinct_n(samples, 2), 4),
        "distinct_fraction": round(distinct_fraction(samples), 4),
        "n": len(samples),
    }


def memorisation(samples: list[list[int]], reference: list[list[int]], exclude: list[int] | None = None) -> dict:
    """Mean nearest-reference distance ``1 − cos`` (hashed uni+bigram features) and the near-copy fraction
    (distance < 0.05). ``exclude[i]``: a reference index sample ``i`` may not match (its own prompt's gold)."""
    from dlm_trl.selection import NGramFeatures

    if not samples or not reference:
        return {"mean_distance": None, "near_copy": None}
    feat = NGramFeatures()
    x, ref = feat(samples).double(), feat(reference).double()  # [N, D], [M, D]
    cos = x @ ref.T  # [N, M]
    if exclude is not None:
        cos[torch.arange(len(samples)), torch.tensor(exclude)] = -math.inf
    d = (1.0 - cos.max(dim=1).values).clamp(0.0, 2.0)  # [N]
    if not bool(torch.isfinite(d).all()):  # a reference set of one excluded item
        return {"mean_distance": None, "near_copy": None}
    return {"mean_distance": round(float(d.mean()), 4), "near_copy": round(float((d < NEAR_COPY).double().mean()), 4)}


def greedy_accuracy(dlm, tokenizer, args: SelfTrainArguments, split: str, n: int) -> dict | None:
    from dlm_trl.evaluation import evaluate

    if n <= 0:
        return None
    r = evaluate(args.task, model=dlm, tokenizer=tokenizer, num_samples=n, seed=args.eval_seed, split=split,
                 batch_size=args.eval_batch_size, progress=args.progress)
    return {"accuracy": r["accuracy"], "mean_reward": r["mean_reward"], "num_samples": r["num_samples"],
            "seconds": r["seconds"]}


# ---------------------------------------------------------------------------------------------- report


def write_report(output_dir: str, report: dict) -> None:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = report["rounds"]
    xs = [0] + [r["round"] for r in rounds]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    ax = axes[0]
    val = [report["start"]["val_accuracy"]] + [r["val_accuracy"] for r in rounds]
    if all(v is not None for v in val):
        ax.plot(xs, [100 * v for v in val], marker="o", label="validation")
    tests = [(0, report["start"]["test_accuracy"])] + [(r["round"], r.get("test_accuracy")) for r in rounds]
    tests = [(x, v) for x, v in tests if v is not None]
    if tests:
        ax.plot([x for x, _ in tests], [100 * v for _, v in tests], marker="s", ls="--", label="test")
    ax.set_title(f"{report['title']}\ngreedy accuracy", fontsize=9)
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    ax = axes[1]
    xr = [r["round"] for r in rounds]
    ax.plot(xr, [r["generated"]["entropy_2"] for r in rounds], marker="o", label="bigram entropy, generated")
    ax.plot(xr, [r["kept_diversity"]["entropy_2"] for r in rounds], marker="o", label="bigram entropy, kept")
    ax.set_ylabel("entropy (nats)")
    ax2 = ax.twinx()
    ax2.plot(xr, [r["generated"]["distinct_2"] for r in rounds], marker="^", color="gray", ls=":", label="distinct-2, generated")
    ax2.set_ylabel("distinct-2")
    ax.set_title("entropy of the self-generated data", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax = axes[2]
    for key, label in (("mem_self", "generated vs earlier SFT data"), ("mem_gold_generated", "generated vs gold (other prompts)"),
                       ("mem_gold_kept", "kept vs gold (other prompts)")):
        pts = [(r["round"], r[key]["mean_distance"]) for r in rounds if r[key]["mean_distance"] is not None]
        if pts:
            ax.plot([x for x, _ in pts], [v for _, v in pts], marker="o", label=label)
    ax.set_title("memorisation: mean nearest-neighbour distance\n(lower = closer to the reference)", fontsize=9)
    ax.set_ylabel("1 − cos (uni+bigram)")
    ax.legend(fontsize=7)
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=110)
    plt.close(fig)


def _pct(v):
    return "   n/a" if v is None else f"{100 * v:5.1f}%"


def _row_line(r: dict) -> str:
    return (f"{r['round']:>5} {r['verified']:>5}/{r['num_generated']:<5} {r['kept']:>4} {_pct(r['val_accuracy'])} "
            f"{r['generated']['entropy_2']:7.3f} {r['generated']['distinct_2']:6.3f} {r['kept_diversity']['entropy_2']:7.3f} "
            f"{'   n/a' if r['mem_self']['mean_distance'] is None else format(r['mem_self']['mean_distance'], '6.3f')} "
            f"{r['sft_loss_first'] if r['sft_loss_first'] is None else round(r['sft_loss_first'], 3)!s:>6}→"
            f"{r['sft_loss_last'] if r['sft_loss_last'] is None else round(r['sft_loss_last'], 3)!s:<6} {r['seconds']['total']:6.1f}s")


HEADER = "round verified/gen  kept   val  H2(gen) dist2  H2(kept) memself  sft loss        time"


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> SelfTrainArguments:
    from trl import TrlParser

    (args,) = TrlParser((SelfTrainArguments,)).parse_args_and_config(argv)
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    from dlm_trl.models import TINY_ALIASES, load
    from dlm_trl.tasks import get_task
    from dlm_trl.trainers.recipe_utils import set_torch_threads

    if args.model_name_or_path in TINY_ALIASES:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    set_torch_threads(args.torch_threads)
    torch.manual_seed(args.seed)
    t_start = time.time()
    task = get_task(args.task)
    dlm, tokenizer = load(args.model_name_or_path, dtype=torch.float32)
    module = dlm.module
    all_rows = task.rows("train", args.rounds * args.prompts_per_round, seed=args.seed)
    gold = [tokenizer(r["reference"], add_special_tokens=False)["input_ids"] if r.get("reference") else None
            for r in all_rows]
    gold = gold if all(g is not None for g in gold) else None

    title = f"self-training · {args.model_name_or_path} · {args.task} · selection={args.selection}"
    t0 = time.time()
    start = {"val": greedy_accuracy(dlm, tokenizer, args, "validation", args.val_samples),
             "test": greedy_accuracy(dlm, tokenizer, args, "test", args.eval_samples)}
    start = {"val_accuracy": start["val"] and start["val"]["accuracy"],
             "test_accuracy": start["test"] and start["test"]["accuracy"], "seconds": round(time.time() - t0, 2)}
    print(f"[self-train] start: validation {_pct(start['val_accuracy'])}, test {_pct(start['test_accuracy'])}", flush=True)
    report = {"title": title, "args": asdict(args), "start": start, "rounds": [], "sft_loss": "dlm_trl.masking.sft_loss",
              "memorisation_reference": {"mem_self": "fine-tuning data of earlier rounds",
                                         "mem_gold": "gold solutions of the run's other training prompts"}}
    sft_corpus: list[list[int]] = []  # every completion fine-tuned on so far (mem_self reference)
    pool: list[dict] = []
    print(HEADER, flush=True)
    for rnd in range(1, args.rounds + 1):
        times = {}
        t = time.time()
        lo = (rnd - 1) * args.prompts_per_round
        rows = all_rows[lo : lo + args.prompts_per_round]
        round_seed = args.seed * 1000 + rnd
        samples, config = sample_completions(dlm, tokenizer, rows, args, round_seed, desc=f"round {rnd}: sample")
        times["sample"] = time.time() - t
        t = time.time()
        verify(task, rows, samples, args.success_reward)
        verified = [dict(s, row=lo + s["row"], round=rnd) for s in samples if s["verified"]]  # row: into all_rows
        pool = (pool + verified) if args.accumulate else verified
        kept_idx = select_kept(pool, args.keep, args.selection, seed=round_seed)
        kept = [pool[i] for i in kept_idx]
        if len(pool) < args.keep:
            print(f"[self-train] round {rnd}: only {len(pool)} verified samples in the pool, fewer than keep="
                  f"{args.keep}: keeping all of them", flush=True)
        times["verify_select"] = time.time() - t
        gen_ids = [s["ids"] for s in samples]
        kept_ids = [s["ids"] for s in kept]
        row_of = [lo + s["row"] for s in samples]
        mem = {
            "mem_self": memorisation(gen_ids, sft_corpus),
            "mem_gold_generated": memorisation(gen_ids, gold, exclude=row_of) if gold else memorisation([], []),
            "mem_gold_kept": memorisation(kept_ids, gold, exclude=[s["row"] for s in kept]) if gold else memorisation([], []),
        }
        t = time.time()
        prompts, answers = sft_examples(tokenizer, [(all_rows[s["row"]]["prompt"], s["ids"]) for s in kept],
                                        config.gen_length)
        losses = fine_tune(module, tokenizer, prompts, answers, steps=args.sft_steps, batch_size=args.sft_batch_size,
                           lr=args.learning_rate, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
                           seed=round_seed, mask_token_id=dlm.mask_token_id)
        sft_corpus += kept_ids
        times["sft"] = time.time() - t
        t = time.time()
        val = greedy_accuracy(dlm, tokenizer, args, "validation", args.val_samples)
        last = rnd == args.rounds
        test = greedy_accuracy(dlm, tokenizer, args, "test", args.eval_samples) if (last or args.test_every_round) else None
        times["eval"] = time.time() - t
        times = {k: round(v, 2) for k, v in times.items()}
        times["total"] = round(sum(times.values()), 2)
        k = min(4, max(1, len(losses) // 2))  # average the first / last k steps (no steps: None)
        entry = {
            "round": rnd, "num_prompts": len(rows), "num_generated": len(samples),
            "verified": sum(s["verified"] for s in samples),
            "train_accuracy_t1": round(sum(s["verified"] for s in samples) / max(1, len(samples)), 4),
            "pool": len(pool), "kept": len(kept), "kept_all_verified": len(pool) <= args.keep,
            "kept_indices": kept_idx,
            "kept_keys": [[s["round"], s["row"], s["sample"]] for s in kept],
            "val_accuracy": val and val["accuracy"], "test_accuracy": test and test["accuracy"],
            "generated": diversity(gen_ids), "kept_diversity": diversity(kept_ids), **mem,
            "sft_loss_first": (sum(losses[:k]) / k) if losses else None,  # mean of the first / last (up to) 4 steps
            "sft_loss_last": (sum(losses[-k:]) / k) if losses else None,
            "sft_losses": [round(x, 4) for x in losses],
            "seconds": times,
        }
        report["rounds"].append(entry)
        print(_row_line(entry), flush=True)
    report["test_final"] = report["rounds"][-1]["test_accuracy"]
    report["seconds"] = round(time.time() - t_start, 2)
    write_report(args.output_dir, report)
    print(f"[self-train] test accuracy {_pct(start['test_accuracy'])} at the start -> {_pct(report['test_final'])} after "
          f"{args.rounds} rounds (selection={args.selection}); report: {os.path.join(args.output_dir, 'report.json')}")
    return report


if __name__ == "__main__":
    main()
