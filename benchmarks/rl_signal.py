"""Is there a learning signal in a batch of rollouts? (diagnostic for the RL batch size)

Samples ``--prompts`` × G rollouts of the embedded tiny model on Countdown *training* prompts,
computes the gradient of each trainer's objective at its first (on-policy) inner step, with the
library's own loss functions and the trainers' default settings, separately on two halves of the
prompts (the same rollouts for every trainer), and reports

* the cosine between the two half-batch gradients (0: pure noise; 1: all signal), and
* held-out accuracy (temperature 0) after one sign step ``θ − η · sign(g)`` — the size of
  Adam's first update — for each ``η`` in ``--steps``, from the full gradient and from each half.

Objectives (``--algos``, ``A = R − mean_group(R)``; at the first inner step every ratio is 1):

* ``gdpo``: ``−Σ_b A_b · Ê_b / L`` (SDMC ELBO, 3 nodes, 1 mask each), the gradient of
  :func:`dlm_trl.losses.sequence_clipped_loss` at r = 1;
* ``diffu_grpo``: :func:`~dlm_trl.losses.clipped_token_loss` on ``one_step_unmasking``
  log-probs (prompt mask 0.15), summed over valid tokens;
* ``dmpo``: WDCE ``Σ_b ŵ_b CE_b`` with ``ŵ`` from :func:`~dlm_trl.losses.dmpo_weights` (ℓ = 0,
  α = ``--alpha``, negative-tilt baseline) tempered to ``--target_ess`` (DMPOConfig's default 0.7;
  ``--target_ess 0`` = untempered, the paper), 4 antithetic replicates.

    python benchmarks/rl_signal.py --prompts 64 --eval_samples 600                      # GDPO
    python benchmarks/rl_signal.py --algos diffu_grpo,gdpo,dmpo --eval_samples 0        # cosines only

On 2 CPU cores one trainer takes about 5 minutes (each trainer's evaluations add 6 × eval_samples
greedy decodes; ``--eval_samples 0`` skips them). It prints a table; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from dlm_trl.estimators import row_generators  # noqa: E402
from dlm_trl.evaluation import decode_completions, encode_prompts, evaluate  # noqa: E402
from dlm_trl.losses import (  # noqa: E402
    clipped_token_loss,
    denoising_cross_entropy,
    dmpo_weights,
    ess_temperature,
)
from dlm_trl.masking import apply_mask, token_log_probs  # noqa: E402
from dlm_trl.models import load  # noqa: E402
from dlm_trl.registry import load_estimator  # noqa: E402
from dlm_trl.sampling import AFTER_EOS, SamplerConfig, generate  # noqa: E402
from dlm_trl.tasks import get_task  # noqa: E402
from dlm_trl.trainers.dmpo import wdce_masks  # noqa: E402

ALGOS = ("gdpo", "diffu_grpo", "dmpo")


def objective(algo, dlm, ids, att, completion_ids, cm, R, A, *, seeds, opts, estimators):
    """The summed on-policy objective of ``algo`` on rows with rewards ``R [k]`` / advantages ``A [k]``."""
    L = completion_ids.shape[1]
    if algo == "gdpo":
        contrib = estimators["gdpo"](dlm, ids, completion_ids, cm, generator=row_generators(seeds),
                                     prompt_attention_mask=att)  # [k, L]
        return -(A * (contrib * cm).sum(1) / L).sum()
    if algo == "diffu_grpo":
        logps = estimators["diffu_grpo"](dlm, ids, completion_ids, cm, generator=row_generators(seeds),
                                         prompt_attention_mask=att)  # [k, L]
        loss, _ = clipped_token_loss(logps, logps.detach(), A, cm, epsilon=0.5, normalization="token")
        return loss * cm.sum()  # a sum over valid tokens, like the other objectives' sums over rows
    # dmpo: weights over whole groups (k = n·G rows), WDCE on 4 antithetic replicates
    G = opts.num_generations
    c = 1.0
    if opts.target_ess > 0:
        c = ess_temperature((R / opts.alpha).view(-1, G), opts.target_ess)
    w, _ = dmpo_weights(torch.zeros_like(R), R, group_size=G, alpha=opts.alpha, c=c)
    noise = wdce_masks(torch.tensor(seeds), torch.ones_like(cm, dtype=torch.bool))  # [k, 4, L]
    Rr, P = noise.shape[1], ids.shape[1]
    full = torch.cat([torch.zeros(ids.shape[0], Rr, P, dtype=torch.bool), noise], 2).flatten(0, 1)
    x = torch.cat([ids, completion_ids], 1).repeat_interleave(Rr, 0)
    attn = torch.cat([att, torch.ones_like(cm)], 1).repeat_interleave(Rr, 0)
    logits = dlm(apply_mask(x, full, dlm.mask_token_id), attention_mask=attn)
    logps = token_log_probs(logits[:, P:], completion_ids.repeat_interleave(Rr, 0)).view(-1, Rr, L)
    return (w.to(logps.dtype) * denoising_cross_entropy(logps, noise)).sum()


def half_gradient(dlm, tok, task, rows, *, G, cfg, algos, opts, estimators, seed, chunk=8):
    """Summed gradient of each objective over ``rows`` (G rollouts each, shared) → ({algo: grads}, rewards [n, G])."""
    model = dlm.module
    params = [p for p in model.parameters() if p.requires_grad]
    acc = {a: [torch.zeros_like(p) for p in params] for a in algos}
    rewards = []
    for s in range(0, len(rows), chunk):
        part = rows[s : s + chunk]
        prompts = [r["prompt"] for r in part for _ in range(G)]
        ids, att = encode_prompts(tok, prompts)
        model.eval()
        with torch.no_grad():
            gens = [torch.Generator().manual_seed(seed * 1_000_003 + s * G + i) for i in range(len(prompts))]
            out = generate(dlm, ids, config=cfg, prompt_attention_mask=att, generator=gens)
        texts = decode_completions(tok, out.completion_ids, out.completion_mask)
        R = torch.tensor(task.score(texts, [r for r in part for _ in range(G)])).view(-1, G)  # [n, G]
        rewards.append(R)
        A = (R - R.mean(1, keepdim=True)).view(-1)  # [n*G]
        cm = out.completion_mask.long()
        seeds = [seed * 7919 + s * G + i for i in range(len(prompts))]
        model.train()
        for algo in algos:
            # GDPO / diffu-GRPO: rows with A = 0 have no gradient (skip them); DMPO needs whole groups
            keep = torch.ones_like(A, dtype=torch.bool) if algo == "dmpo" else A != 0
            if not bool((A != 0).any()):
                continue
            k = keep.nonzero().flatten()
            loss = objective(algo, dlm, ids[k], att[k], out.completion_ids[k], cm[k], R.view(-1)[k], A[k],
                             seeds=[seeds[i] for i in k.tolist()], opts=opts, estimators=estimators)
            model.zero_grad(set_to_none=True)
            loss.backward()
            for a, p in zip(acc[algo], params, strict=True):
                if p.grad is not None:
                    a += p.grad
    return acc, torch.cat(rewards)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--algos", default="gdpo", help=f"comma-separated objectives among {ALGOS}")
    ap.add_argument("--prompts", type=int, default=64, help="training prompts (split in two halves)")
    ap.add_argument("--num_generations", type=int, default=8)
    ap.add_argument("--eval_samples", type=int, default=600, help="held-out prompts per evaluation (0: none)")
    ap.add_argument("--steps", default="1e-5,2e-5", help="sign-step sizes η to evaluate")
    ap.add_argument("--alpha", type=float, default=0.04, help="DMPO's α")
    ap.add_argument("--target_ess", type=float, default=0.7, help="DMPO's ESS target (0: untempered)")
    ap.add_argument("--after_eos", default="eos", choices=AFTER_EOS, help="sampler: tokens after the first EOS")
    ap.add_argument("--prompt_seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=None)
    opts = ap.parse_args()
    algos = [a.strip() for a in opts.algos.split(",") if a.strip()]
    unknown = sorted(set(algos) - set(ALGOS))
    if unknown:
        ap.error(f"--algos: unknown {unknown}; choose among {ALGOS}")
    if opts.threads:
        torch.set_num_threads(opts.threads)

    dlm, tok = load(opts.model)
    model = dlm.module
    task = get_task("countdown")
    rows = task.rows("train", opts.prompts, seed=opts.prompt_seed)
    cfg = SamplerConfig(gen_length=task.gen_length, block_length=task.block_length, steps=task.gen_length // 2,
                        temperature=1.0, after_eos=opts.after_eos)
    estimators = {
        "gdpo": load_estimator("sdmc_elbo", num_nodes=3, masks_per_node=1),
        "diffu_grpo": load_estimator("one_step_unmasking", p_mask_prompt=0.15),
    }

    t0 = time.time()
    halves, rewards = [], []
    for h in range(2):
        g, R = half_gradient(dlm, tok, task, rows[h::2], G=opts.num_generations, cfg=cfg, algos=algos, opts=opts,
                             estimators=estimators, seed=h)
        halves.append(g)
        rewards.append(R)
    R = torch.cat(rewards)
    flat_groups = ((R.max(1).values - R.min(1).values) == 0).float().mean().item()
    print(f"{opts.prompts} prompts × {opts.num_generations} rollouts in {time.time() - t0:.0f} s; "
          f"mean reward {R.mean():.3f}; groups with equal rewards {100 * flat_groups:.0f} %")
    print("| objective | cosine between the two half-batch gradients |\n|---|---|")
    for algo in algos:
        flat = [torch.cat([x.flatten() for x in halves[h][algo]]) for h in range(2)]
        cos = torch.nn.functional.cosine_similarity(flat[0], flat[1], dim=0).item()
        print(f"| {algo} | {cos:.3f} |", flush=True)
    if opts.eval_samples <= 0:
        return

    params = [p for p in model.parameters() if p.requires_grad]
    base = [p.detach().clone() for p in params]
    print("\n| objective | update | η | held-out accuracy (%) |\n|---|---|---|---|")
    plan = [("-", "none", None, 0.0)] + [
        (algo, name, g, float(eta)) for algo in algos for eta in opts.steps.split(",")
        for name, g in (("full batch", [a + b for a, b in zip(halves[0][algo], halves[1][algo], strict=True)]),
                        ("half 1", halves[0][algo]), ("half 2", halves[1][algo]))
    ]
    for algo, name, g, eta in plan:
        with torch.no_grad():
            for p, b, d in zip(params, base, g if g is not None else base, strict=True):
                p.copy_(b if g is None else b - eta * torch.sign(d))
        res = evaluate("countdown", model=dlm, tokenizer=tok, num_samples=opts.eval_samples, progress=False)
        print(f"| {algo} | {name} | {eta:g} | {100 * res['accuracy']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
