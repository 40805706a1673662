"""What ``rollout_correction`` would do to the recipes' rollouts: the gap between each token's
log-probability when the sampler committed it and the trained likelihood, and the weights it gives.

On the embedded model and Countdown *training* prompts (the recipes' rollout: gen_length 48, block 16,
24 steps, temperature 1, groups of 8), for each rollout decoder × likelihood estimator:

* ``gap/token`` — mean over valid tokens of ``d_i = estimate_i − commit_logprob_i`` (nats), the
  log-weight of ``token_*`` modes; its spread across tokens (sd);
* ``gap/sequence`` — mean over rows of the per-row mean of ``d_i`` (the log-weight of ``sequence_*``);
* the weights of ``token_truncate`` and ``sequence_truncate`` at ``--cap`` (TRL's default 3): their
  mean, and the fraction of tokens / rows whose weight the cap or a floor of ``1 / cap`` would change.

The estimators are those of the recipes: ``one_step_unmasking`` (diffu-GRPO, prompt masking 0.15) and
``sdmc_elbo`` (GDPO, 3 nodes × 1 mask), on the rollout policy itself — so a perfectly matched
likelihood would give d = 0; what is left is the mismatch between what the sampler does and what the
estimator scores. Writes ``<out>.md`` and ``<out>.json`` and prints the table::

    python benchmarks/rollout_correction_gap.py                 # ~2 min on 2 cores
    python benchmarks/rollout_correction_gap.py --prompts 8     # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from dlm_trl.evaluation import encode_prompts, row_generator  # noqa: E402
from dlm_trl.losses import rollout_correction_weights  # noqa: E402
from dlm_trl.models import load  # noqa: E402
from dlm_trl.registry import load_estimator  # noqa: E402
from dlm_trl.sampling import ROLLOUT_PRESETS, SamplerConfig, generate, keep_freed_memory  # noqa: E402
from dlm_trl.tasks import get_task  # noqa: E402

DECODERS = {
    "plain": {},
    "fast (threshold 0.9)": dict(ROLLOUT_PRESETS["fast"]),
    "threshold 0.99 + prefix": dict(transfer="threshold", threshold=0.99, cache="prefix"),
}
ESTIMATORS = {
    "one_step_unmasking (diffu-GRPO)": ("one_step_unmasking", {"p_mask_prompt": 0.15}),
    "sdmc_elbo (GDPO)": ("sdmc_elbo", {"num_nodes": 3, "masks_per_node": 1}),
}


def measure(dlm, ids, att, decoder: dict, estimator, seed: int, cap: float) -> dict:
    cfg = SamplerConfig.for_family("llada", gen_length=48, block_length=16, steps=24, temperature=1.0, **decoder)
    gens = [row_generator(seed, i) for i in range(ids.shape[0])]
    out = generate(dlm, ids, config=cfg, prompt_attention_mask=att, generator=gens)
    mask = out.completion_mask
    with torch.no_grad():
        est = estimator(dlm, ids, out.completion_ids, mask, generator=[row_generator(seed + 1, i) for i in
                        range(ids.shape[0])], prompt_attention_mask=att).float()
    m = mask.bool()
    d = (est - out.commit_logprob)[m]
    row_gap = ((est - out.commit_logprob).nan_to_num(0.0) * m).sum(1) / m.sum(1).clamp(min=1)
    res = {"gap_token_mean": float(d.mean()), "gap_token_sd": float(d.std()),
           "gap_sequence_mean": float(row_gap.mean()), "gap_sequence_sd": float(row_gap.std()),
           "commit_logprob_mean": float(out.commit_logprob[m].mean()), "estimate_mean": float(est[m].mean())}
    for mode in ("token_truncate", "sequence_truncate"):
        w, metrics = rollout_correction_weights(est, out.commit_logprob, mask, mode=mode, clip_min=1 / cap,
                                                clip_max=cap)
        res[f"{mode}/weight_mean"] = float(metrics["rollout_correction/weight_mean"])
        res[f"{mode}/changed_frac"] = float(metrics["rollout_correction/changed_frac"])
    return res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=32, help="training prompts, 8 rollouts each")
    p.add_argument("--cap", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="docs/rollout_correction_gap")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    torch.manual_seed(args.seed)
    dlm, tok = load("tiny")
    rows = [r for r in get_task("countdown").rows("train", args.prompts, seed=args.seed) for _ in range(8)]
    ids, att = encode_prompts(tok, [r["prompt"] for r in rows], device="cpu")
    t0 = time.time()
    results = {}
    for dname, decoder in DECODERS.items():
        for ename, (est_name, kwargs) in ESTIMATORS.items():
            results[f"{dname} | {ename}"] = measure(dlm, ids, att, decoder, load_estimator(est_name, **kwargs),
                                                    args.seed, args.cap)
            print(f"[gap] {dname} | {ename}: {results[f'{dname} | {ename}']['gap_token_mean']:+.2f} nats/token",
                  flush=True)
    write(results, args, time.time() - t0)


def write(results: dict, args, seconds: float) -> None:
    c = args.cap
    lines = [
        "# Rollout correction: the sampler-to-likelihood gap on the recipes' rollouts", "",
        f"Embedded model, {args.prompts} Countdown training prompts × 8 rollouts (gen_length 48, block 16, 24 steps, "
        f"temperature 1), seed {args.seed}; `python benchmarks/rollout_correction_gap.py` ({seconds / 60:.1f} min). "
        "d = the estimator's per-token value − the token's log-probability when the sampler committed it, on the "
        f"rollout policy itself. Weights truncated to [1/{c:g}, {c:g}].", "",
        "| decoder | estimator | commit log-prob / token | estimate / token | d per token (mean ± sd) | "
        "d per sequence (mean ± sd over rows) | token_truncate: weight mean, changed | "
        "sequence_truncate: weight mean, changed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        dname, ename = key.split(" | ")
        lines.append(
            f"| {dname} | {ename} | {r['commit_logprob_mean']:.2f} | {r['estimate_mean']:.2f} | "
            f"{r['gap_token_mean']:+.2f} ± {r['gap_token_sd']:.2f} | {r['gap_sequence_mean']:+.2f} ± "
            f"{r['gap_sequence_sd']:.2f} | {r['token_truncate/weight_mean']:.2f}, "
            f"{100 * r['token_truncate/changed_frac']:.0f} % | {r['sequence_truncate/weight_mean']:.2f}, "
            f"{100 * r['sequence_truncate/changed_frac']:.0f} % |"
        )
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
