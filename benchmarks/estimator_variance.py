"""Bias, variance and cost of the likelihood estimators at equal forward-pass budgets.

On the embedded tiny model and real sampled completions of the default task
(Countdown), for each estimator and NFE budget in {1, 2, 3, 4, 8, 16}:

* **short completions** (the first ``--short-length`` = 8 tokens of each completion): bias
  and variance against ``exact_elbo`` (every mask enumerated). The model is wrapped in a
  memo that returns cached logits for a noisy input seen before: the exact enumeration
  forwards every possible completion mask once, so the Monte Carlo estimators run their
  real code on real logits without paying for forwards again (hundreds of replicates);
* **realistic completions** (``--long-length`` = 64 tokens): variance across replicates
  and wall time per sequence estimate;
* **log-ratio** ``Ê_θ'(y) − Ê_θ(y)`` between two nearby models (θ' = θ after one Adam step,
  lr 1e-4, on LLaDA's SFT loss over the sampled sequences) with *shared* generators
  (same times and masks on both sides) vs *independent* ones.

Budget → estimator settings: ``double_mc_elbo`` and ``stratified_elbo`` use
``num_samples = NFE``; ``sdmc_elbo`` uses Gauss nodes N = the largest divisor of NFE in
1..5 and ``masks_per_node = NFE / N`` (N = 1, 2, 3, 4, 4, 4); ``one_step_unmasking`` has a
budget of 1 only (d1; it targets a different quantity, its "bias" is against the ELBO).
All ELBO estimators use ``length="padded"``.

``--antithetic`` adds, next to each ELBO estimator's row at an even budget (2, 4, 8, 16), its
``antithetic=True`` variant (ESPO's coupled draws, arXiv 2512.03759) with the same settings and
NFE: double-MC pairs (t, S) with (1−t, complement of S); SDMC gives mirrored Gauss nodes
complementary masks; stratified draws b/2 complementary count pairs on the 0..n grid. Bias and
measured variance as for the independent rows; no closed-form ("exact") variance (the
formulas assume independent draws), and no log-ratio rows.

Writes ``docs/estimator_variance.{md,json,png}`` (``--out``: another path stem) and prints the markdown.

    python benchmarks/estimator_variance.py                # trained tiny model, ~3-5 min on 2 cores
    python benchmarks/estimator_variance.py --random-init  # no checkpoint needed
    python benchmarks/estimator_variance.py --quick        # smoke run
    python benchmarks/estimator_variance.py --antithetic --out docs/estimator_variance_antithetic
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

from dlm_trl.estimators import row_generators
from dlm_trl.masking import sft_loss
from dlm_trl.registry import load_estimator

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = (1, 2, 3, 4, 8, 16)
ESTIMATORS = ("double_mc_elbo", "sdmc_elbo", "stratified_elbo", "one_step_unmasking")


def settings(name: str, nfe: int, antithetic: bool = False) -> dict | None:
    """Constructor kwargs of ``name`` at a budget of ``nfe`` forwards per sequence (None: n/a).

    ``antithetic``: the coupled variant with the same settings — ELBO estimators at an even budget
    only (pairs of draws; SDMC's mirrored nodes need N ≥ 2, which every even budget gives).
    """
    if antithetic:
        if name == "one_step_unmasking" or nfe % 2:
            return None
        return {**settings(name, nfe), "antithetic": True}
    if name in ("double_mc_elbo", "stratified_elbo"):
        return {"num_samples": nfe}
    if name == "sdmc_elbo":
        n = max(d for d in range(1, 6) if nfe % d == 0)
        return {"num_nodes": n, "masks_per_node": nfe // n}
    if name == "one_step_unmasking":
        return {} if nfe == 1 else None
    raise ValueError(name)


def label(name: str, kw: dict) -> str:
    suffix = ", antithetic" if kw.get("antithetic") else ""
    if name == "sdmc_elbo":
        return f"N={kw['num_nodes']},K={kw['masks_per_node']}{suffix}"
    if "num_samples" in kw:
        return f"K={kw['num_samples']}{suffix}"
    return "p=0.15"


def grid(args) -> list[tuple[int, bool]]:
    """``(nfe, antithetic)`` measured per estimator: each budget's independent draws, then its coupled ones."""
    return [(nfe, anti) for nfe in BUDGETS for anti in ((False, True) if args.antithetic else (False,))]


def load_at(name: str, nfe: int, antithetic: bool, batch_size: int):
    """``(estimator, settings)`` at a budget, or None; an antithetic variant costs the independent one's NFE."""
    kw = settings(name, nfe, antithetic)
    if kw is None:
        return None
    est = load_estimator(name, batch_size=batch_size, **kw)
    assert est.nfe(8) == nfe, (name, kw, est.nfe(8))
    return est, kw


# ----------------------------------------------------------------------------- model and data


class MemoModel:
    """Wrap a DLM: logits of a noisy row seen before come from a cache (completion part only).

    Only ``logits[:, P:]`` is filled — the estimators read nothing else. Misses are forwarded
    in one batch and stored. Exact: the cached logits are those the model gave that row.
    """

    def __init__(self, model, P: int):
        self.model, self.P = model, P
        self.mask_token_id = model.mask_token_id
        self.eos_token_id = getattr(model, "eos_token_id", None)
        self.cache: dict[bytes, torch.Tensor] = {}
        self.rows_forwarded = 0

    def __call__(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        att = attention_mask if attention_mask is not None else torch.ones_like(ids)
        keys = [a.numpy().tobytes() + b.numpy().tobytes() for a, b in zip(ids, att, strict=True)]
        miss = [i for i, k in enumerate(keys) if k not in self.cache]
        if miss:
            idx = torch.tensor(miss)
            with torch.no_grad():
                logits = self.model(ids[idx], attention_mask=None if attention_mask is None else attention_mask[idx])
            self.rows_forwarded += len(miss)
            for j, i in enumerate(miss):
                self.cache[keys[i]] = logits[j, self.P :].float().clone()
        first = self.cache[keys[0]]
        out = torch.empty(ids.shape[0], ids.shape[1], first.shape[-1])
        out[:, self.P :] = torch.stack([self.cache[k] for k in keys])
        return out


def random_init_model(seed: int):
    from dlm_trl.models import DLM, TinyDLMConfig, TinyDLMForMaskedDiffusion

    torch.manual_seed(seed)
    cfg = TinyDLMConfig(vocab_size=512, initializer_range=0.05, mask_token_id=1, eos_token_id=2, pad_token_id=2)
    return DLM.wrap(TinyDLMForMaskedDiffusion(cfg).eval()), None


def sample_data(model, tokenizer, args) -> dict:
    """Prompts of the default task and completions sampled from the model (rollout settings)."""
    from dlm_trl.sampling import SamplerConfig, generate

    n = args.num_seqs
    if tokenizer is not None:
        from dlm_trl.evaluation import encode_prompts
        from dlm_trl.tasks import get_task

        task = get_task(args.task)
        rows = task.rows("train", n, seed=args.seed)
        prompt, pam = encode_prompts(tokenizer, [r["prompt"] for r in rows])
        source = f"{task.name} prompts (train split, seed {args.seed})"
    else:
        g = torch.Generator().manual_seed(args.seed)
        vocab = model.module.config.vocab_size
        prompt = torch.randint(4, vocab, (n, 48), generator=g)
        pam = torch.ones_like(prompt)
        source = "random prompts of 48 tokens (--random-init)"
    L = args.long_length
    block = 32 if L % 32 == 0 else L
    cfg = SamplerConfig(gen_length=L, block_length=block, steps=L // 2, temperature=args.temperature)
    out = generate(model, prompt, config=cfg, prompt_attention_mask=pam, generator=row_generators(range(n)))
    return {
        "prompt": prompt,
        "pam": pam,
        "comp": out.completion_ids,
        "cmask": out.completion_mask,
        "source": source,
        "sampler": {"gen_length": L, "block_length": block, "steps": L // 2, "temperature": args.temperature},
    }


def nudged_copy(model, data, lr: float, seed: int):
    """θ' = θ after one Adam step on LLaDA's SFT loss over the sampled (prompt, completion) pairs."""
    from dlm_trl.models import DLM

    module = copy.deepcopy(model.module).train()
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    new = DLM(module=module, mask_token_id=model.mask_token_id, family=model.family, eos_token_id=model.eos_token_id)
    ids = torch.cat([data["prompt"], data["comp"]], 1)
    att = torch.cat([data["pam"], torch.ones_like(data["comp"])], 1)
    P = data["prompt"].shape[1]
    loss = sft_loss(
        new, ids, torch.full((ids.shape[0],), P), model.mask_token_id,
        generator=torch.Generator().manual_seed(seed), attention_mask=att,
    )
    loss.backward()
    opt.step()
    module.eval()
    return new


# ----------------------------------------------------------------------------- measurements


def replicate(est, model, prompt, pam, comp, cmask, R: int, seed: int) -> torch.Tensor:
    """``[S, R]`` sequence estimates; replicate r of sequence s uses generator seed ``seed + s*R + r``."""
    S = prompt.shape[0]
    with torch.no_grad():
        out = est(
            model,
            prompt.repeat_interleave(R, 0),
            comp.repeat_interleave(R, 0),
            cmask.repeat_interleave(R, 0),
            generator=row_generators(range(seed, seed + S * R)),
            prompt_attention_mask=pam.repeat_interleave(R, 0),
        )
    return (out.double() * cmask.repeat_interleave(R, 0)).sum(1).view(S, R)


def summarise(reps: torch.Tensor, target: torch.Tensor | None = None) -> dict:
    """Pooled within-sequence variance and (with a target) mean bias ± its standard error."""
    S, R = reps.shape
    var = reps.var(1, unbiased=True)  # [S]
    out = {"variance": float(var.mean()), "mean": float(reps.mean())}
    if target is not None:
        err = reps.mean(1) - target  # [S]
        out["bias"] = float(err.mean())
        out["bias_se"] = float(math.sqrt(float(var.mean()) / (R * S)))
    return out


class SubsetValues:
    """Every mask of a short completion and its value ``v(S) = Σ_{i∈S, counted} log f(y_i | y_S→M)``.

    From these the exact mean and variance of the double-MC, SDMC and stratified estimators
    follow without sampling (their randomness is a choice of t / count and of S).
    """

    def __init__(self, model, prompt, pam, comp, cmask, batch_size):
        from dlm_trl_estimators._common import completion_log_probs

        S, L = comp.shape
        self.n = L  # length="padded": every completion position is maskable
        code = torch.arange(1, 2**L)
        bits = (code[:, None].bitwise_right_shift(torch.arange(L)[None, :]) & 1).bool()  # [M, L]
        masks = bits.repeat(S, 1)  # [S*M, L]
        rows = torch.arange(S).repeat_interleave(bits.shape[0])
        with torch.no_grad():
            logp = completion_log_probs(model, prompt, comp, masks, prompt_attention_mask=pam,
                                        batch_size=batch_size, rows=rows)  # [S*M, L]
        counted = masks & cmask.bool()[rows]
        self.values = torch.where(counted, logp.double(), torch.zeros((), dtype=torch.float64)).sum(1).view(S, -1)
        self.sizes = bits.sum(1)  # [M]

    def by_count(self):
        """``mu [S, n+1]`` and ``var [S, n+1]`` of v(S) over the subsets of each size (population)."""
        S, n = self.values.shape[0], self.n
        mu = torch.zeros(S, n + 1, dtype=torch.float64)
        var = torch.zeros(S, n + 1, dtype=torch.float64)
        for k in range(1, n + 1):
            v = self.values[:, self.sizes == k]
            mu[:, k], var[:, k] = v.mean(1), v.var(1, unbiased=False)
        return mu, var

    def double_mc(self, eps: float = 1e-3):
        """Exact (mean [S], variance [S]) of one double-MC draw: t ~ U(eps, 1), S ~ Bern(t), v(S)/t."""
        n = self.n

        def integral(a: int, b: int) -> float:  # (1/(1-eps)) ∫_eps^1 t^a (1-t)^b dt
            total = 0.0
            for j in range(b + 1):
                p = a + j
                term = -math.log(eps) if p == -1 else (1.0 - eps ** (p + 1)) / (p + 1)
                total += math.comb(b, j) * (-1) ** j * term
            return total / (1.0 - eps)

        m1 = torch.tensor([integral(k - 1, n - k) for k in self.sizes.tolist()], dtype=torch.float64)
        m2 = torch.tensor([integral(k - 2, n - k) for k in self.sizes.tolist()], dtype=torch.float64)
        mean = (self.values * m1).sum(1)
        return mean, (self.values**2 * m2).sum(1) - mean**2

    def sdmc(self, est):
        """Exact (mean, variance) of ``sdmc_elbo`` (its node plan, K masks per node)."""
        mu, var = self.by_count()
        m, v = est.node_plan(torch.full((mu.shape[0],), self.n))  # [S, N]
        mean = (v.double() * torch.gather(mu, 1, m)).sum(1)
        variance = (v.double() ** 2 * torch.gather(var, 1, m)).sum(1) / est.masks_per_node
        return mean, variance

    def stratified(self, b: int):
        """Exact (mean, variance) of ``stratified_elbo`` with b draws, integrating over the offset u."""
        from dlm_trl_estimators.stratified_elbo import stratified_counts

        n = self.n
        mu, var = self.by_count()
        h, w2var = (n / torch.arange(1, n + 1)) * mu[:, 1:], (n / torch.arange(1, n + 1)) ** 2 * var[:, 1:]
        cuts = sorted({((k / n - j / b) % 1.0) for k in range(n) for j in range(b)} | {0.0, 1.0})
        e1 = torch.zeros(mu.shape[0], dtype=torch.float64)
        e2 = torch.zeros_like(e1)
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            if hi - lo < 1e-12:
                continue
            counts = stratified_counts(torch.tensor([(lo + hi) / 2]), torch.tensor([n]), b)[0] - 1  # [b]
            cond_mean = h[:, counts].mean(1)
            cond_var = w2var[:, counts].sum(1) / b**2
            e1 += (hi - lo) * cond_mean
            e2 += (hi - lo) * (cond_var + cond_mean**2)
        return e1, e2 - e1**2


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    t_start = time.time()
    if args.random_init:
        model, tokenizer = random_init_model(args.seed)
        model_name = "random-init TinyDLM (vocab 512, init std 0.05)"
    else:
        from dlm_trl.models import load

        try:
            model, tokenizer = load(args.model)
        except FileNotFoundError as err:
            sys.exit(f"{err}\nRun with --random-init to benchmark a randomly initialised model instead.")
        model_name = args.model
    model.module.eval()
    data = sample_data(model, tokenizer, args)
    S, P = data["prompt"].shape
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if not args.quiet else (lambda *a: None)
    log(f"[{time.time() - t_start:.0f}s] sampled {S} completions of {args.long_length} tokens ({data['source']})")
    nudged = nudged_copy(model, data, args.lr, args.seed)

    result: dict = {
        "model": model_name,
        "data": data["source"],
        "sampler": data["sampler"],
        "num_seqs": S,
        "prompt_width": P,
        "completion_true_lengths": data["cmask"].sum(1).tolist(),
        "budgets": list(BUDGETS),
        "settings": "double_mc/stratified: num_samples=NFE; sdmc: Gauss N=largest divisor of NFE in 1..5, K=NFE/N; length='padded'",
        "threads": args.threads,
        "machine": f"{platform.machine()} CPU, torch {torch.__version__}",
    }
    if args.antithetic:
        result["antithetic"] = True

    # --- short completions: bias and variance vs exact (memoised logits)
    Ls = args.short_length
    comp_s, cmask_s = data["comp"][:, :Ls].contiguous(), data["cmask"][:, :Ls].contiguous()
    memo = {"θ": MemoModel(model, P), "θ'": MemoModel(nudged, P)}
    exact_est = load_estimator("exact_elbo", batch_size=args.batch_size)
    exact, tables = {}, {}
    for k, m in memo.items():
        with torch.no_grad():
            table, n = exact_est.count_table(m, data["prompt"], comp_s, cmask_s, prompt_attention_mask=data["pam"])
        tables[k] = (table, n)
        inv_l = torch.cat([torch.zeros(1, dtype=torch.float64), 1.0 / torch.arange(1, Ls + 1, dtype=torch.float64)])
        exact[k] = ((table * inv_l[None, :, None]).sum(1) * cmask_s).sum(1)  # [S]
    subsets = SubsetValues(memo["θ"], data["prompt"], data["pam"], comp_s, cmask_s, args.batch_size)
    dmc_mean, dmc_var = subsets.double_mc()
    assert torch.allclose(dmc_mean, exact["θ"], rtol=5e-3, atol=5e-2), (dmc_mean, exact["θ"])
    log(f"[{time.time() - t_start:.0f}s] exact ELBO of {S} completions of {Ls} tokens, 2 models")
    short_rows, lr_short = [], []
    for name in ESTIMATORS:
        # d1's prompt masks make every noisy row new: no memo, fewer replicates
        R = args.one_step_reps if name == "one_step_unmasking" else args.short_reps
        mm = {"θ": model, "θ'": nudged} if name == "one_step_unmasking" else memo
        for nfe, anti in grid(args):
            loaded = load_at(name, nfe, anti, args.batch_size)
            if loaded is None:
                continue
            est, kw = loaded
            a = replicate(est, mm["θ"], data["prompt"], data["pam"], comp_s, cmask_s, R, seed=1_000)
            row = {"estimator": name, "settings": label(name, kw), "nfe": nfe, **summarise(a, exact["θ"])}
            if name == "sdmc_elbo":
                table, n = tables["θ"]
                quad = (est.expected_contributions(table, n) * cmask_s).sum(1)  # [S] (coupled counts if antithetic)
                row["quadrature_bias"] = float((quad - exact["θ"]).mean())
            if anti:  # no exact variance: the closed forms below assume independent draws
                row["antithetic"] = True
            elif name == "sdmc_elbo":
                row["exact_variance"] = float(subsets.sdmc(est)[1].mean())
            elif name == "double_mc_elbo":
                row["exact_variance"] = float(dmc_var.mean()) / nfe
            elif name == "stratified_elbo":
                row["exact_variance"] = float(subsets.stratified(nfe)[1].mean())
            short_rows.append(row)
            if anti:  # log-ratios: independent draws only
                continue
            # log-ratio θ' − θ: shared generators vs independent ones
            b = replicate(est, mm["θ'"], data["prompt"], data["pam"], comp_s, cmask_s, R, seed=1_000)
            c = replicate(est, mm["θ"], data["prompt"], data["pam"], comp_s, cmask_s, R, seed=9_000_000)
            true_lr = exact["θ'"] - exact["θ"]
            lr_short.append({
                "estimator": name, "settings": label(name, kw), "nfe": nfe,
                "shared": summarise(b - a, true_lr), "independent": summarise(b - c, true_lr),
            })
    log(f"[{time.time() - t_start:.0f}s] short-completion estimators done")
    result["short"] = {
        "length": Ls,
        "reps_per_seq": args.short_reps,
        "one_step_reps_per_seq": args.one_step_reps,
        "exact_mean": float(exact["θ"].mean()),
        "exact_log_ratio_mean": float((exact["θ'"] - exact["θ"]).mean()),
        "rows": short_rows,
        "log_ratio": lr_short,
    }

    # --- realistic completions: variance and wall time
    R = args.long_reps
    long_rows, long_reps = [], {}
    for name in ESTIMATORS:
        for nfe, anti in grid(args):
            loaded = load_at(name, nfe, anti, args.batch_size)
            if loaded is None:
                continue
            est, kw = loaded
            t0 = time.perf_counter()
            a = replicate(est, model, data["prompt"], data["pam"], data["comp"], data["cmask"], R, seed=2_000)
            ms = 1000 * (time.perf_counter() - t0) / (S * R)
            long_rows.append({"estimator": name, "settings": label(name, kw), "nfe": nfe, "ms_per_estimate": ms,
                              **summarise(a), **({"antithetic": True} if anti else {})})
            long_reps[(name, nfe, anti)] = a
        log(f"[{time.time() - t_start:.0f}s] long completions: {name} done")
    # no exact value at this length: the unbiased stratified estimator at 16 forwards is the reference
    ref = long_reps[("stratified_elbo", 16, False)]  # [S, R]
    for row in long_rows:
        a = long_reps[(row["estimator"], row["nfe"], row.get("antithetic", False))]
        row["diff_vs_reference"] = float((a.mean(1) - ref.mean(1)).mean())
        row["diff_se"] = float(math.sqrt((a.var(1).mean() + ref.var(1).mean()) / (S * R)))
    # log-ratio at the GDPO budget (3 forwards; d1's 1)
    lr_long = []
    for name in ESTIMATORS:
        nfe = 1 if name == "one_step_unmasking" else 3
        kw = settings(name, nfe)
        est = load_estimator(name, batch_size=args.batch_size, **kw)
        args_ = (data["prompt"], data["pam"], data["comp"], data["cmask"], R)
        a = replicate(est, model, *args_, seed=3_000)
        b = replicate(est, nudged, *args_, seed=3_000)
        c = replicate(est, model, *args_, seed=7_000_000)
        lr_long.append({"estimator": name, "settings": label(name, kw), "nfe": nfe,
                        "shared": summarise(b - a), "independent": summarise(b - c)})
    log(f"[{time.time() - t_start:.0f}s] long completions: log-ratios done")
    result["long"] = {"length": args.long_length, "reps_per_seq": R, "rows": long_rows, "log_ratio": lr_long}
    result["seconds"] = round(time.time() - t_start, 1)
    return result


# ----------------------------------------------------------------------------- report


def _get(rows, name, nfe, antithetic=False):
    return next((r for r in rows if r["estimator"] == name and r["nfe"] == nfe
                 and r.get("antithetic", False) == antithetic), None)


def markdown(res: dict) -> str:
    sh, lo = res["short"], res["long"]
    lines = [
        "# Likelihood-estimator variance",
        "",
        f"Model: `{res['model']}`; data: {res['data']}; {res['num_seqs']} sampled completions "
        f"(sampler {res['sampler']}), true lengths {res['completion_true_lengths']}. "
        f"Produced by `benchmarks/estimator_variance.py` in {res['seconds']} s ({res['machine']}, "
        f"{res['threads']} thread(s)).",
        "",
        f"Settings per budget: {res['settings']}. Variances are of the *sequence* estimate "
        "(sum over counted tokens), pooled over sequences. Short = the first "
        f"{sh['length']} tokens of each completion ({sh['reps_per_seq']} replicates per sequence, "
        f"{sh['one_step_reps_per_seq']} for one_step_unmasking; "
        f"mean exact ELBO {sh['exact_mean']:.2f}); long = the full {lo['length']}-token completions "
        f"({lo['reps_per_seq']} replicates per sequence).",
        "",
        "Definitions (all ELBO estimators, `length=\"padded\"`): every completion position, EOS padding "
        "included, is maskable, n = L; only positions with `completion_mask == 1` contribute. "
        "double-MC: t ~ U(1e-3, 1), Bernoulli(t) mask, weight 1/t. SDMC: Gauss–Legendre nodes t_j, exactly "
        "m_j = max(1, floor(t_j n)) tokens masked, weight w_j / t_j (GDPO). Stratified: counts "
        "l_j = 1 + floor(((u + j/b) mod 1) n), weight n / l_j. Exact: every mask enumerated (count form). "
        "SDMC's mean is its quadrature value (shown as *quad.*), not the ELBO: the 1/t weight with a floored "
        "count over-weights the first node at short lengths.",
        "",
        *([] if not res.get("antithetic") else [
            "Antithetic rows (`antithetic=True`, ESPO's coupled draws, arXiv 2512.03759; even budgets, same "
            "settings and NFE as the row above): draws come in pairs whose masks are complements over the n "
            "maskable positions, so each pair predicts every token once. double-MC: draw 2p has t ~ U(1e-3, "
            "1 − 1e-3) and a Bernoulli(t) mask S (weight 1/t), draw 2p+1 masks the complement of S at time "
            "1 − t (weight 1/(1 − t)). SDMC: the Gauss nodes are mirror-symmetric (t_j ↔ 1 − t_j); mask k "
            "of the mirrored node is the complement of mask k of node j, so it masks n − m_j tokens "
            "(its weight unchanged); the mean stays the quadrature value of the coupled counts (*quad.*). "
            "Stratified: b/2 primaries mask x_j = floor(((u + j/(b/2)) mod 1)(n + 1)) ∈ 0..n tokens, weight "
            "(n + 1)/x_j, each partner the complement, weight (n + 1)/(n − x_j) — unbiased for the count-form "
            "ELBO. The exact-variance column is left empty (—) for these rows: its closed forms assume "
            "independent draws; their variance is the measured one. No log-ratio rows for them.",
            "",
        ]),
        f"| estimator | settings | NFE | bias vs exact (L={sh['length']}) | exact var (L={sh['length']}) | "
        f"measured var (L={sh['length']}) | var (L={lo['length']}) | mean − stratified-16 (L={lo['length']}) | "
        f"ms / estimate (L={lo['length']}) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sh["rows"]:
        l_ = _get(lo["rows"], r["estimator"], r["nfe"], r.get("antithetic", False))
        bias = f"{r['bias']:+.3f} ± {r['bias_se']:.3f}"
        if "quadrature_bias" in r:
            bias += f" (quad. {r['quadrature_bias']:+.3f})"
        exact_var = f"{r['exact_variance']:.3g}" if "exact_variance" in r else "—"
        lines.append(
            f"| {r['estimator']} | {r['settings']} | {r['nfe']} | {bias} | {exact_var} | {r['variance']:.3g} | "
            f"{l_['variance']:.3g} | {l_['diff_vs_reference']:+.2f} ± {l_['diff_se']:.2f} | "
            f"{l_['ms_per_estimate']:.1f} |"
        )
    lines += ["", "## Ratios", ""]
    for key, L, var in (("short", sh["length"], "exact_variance"), ("long", lo["length"], "variance")):
        rows = res[key]["rows"]
        sd, dm, st = _get(rows, "sdmc_elbo", 3), _get(rows, "double_mc_elbo", 3), _get(rows, "stratified_elbo", 3)
        dm4 = _get(rows, "double_mc_elbo", 4)
        what = "exact variances" if var == "exact_variance" else f"measured, {lo['reps_per_seq']} replicates/sequence"
        lines.append(
            f"- L={L} ({what}): Var(SDMC N=3) / Var(double-MC K=3) = {sd[var] / dm[var]:.3f}; "
            f"Var(SDMC N=3) / Var(double-MC K=4) = {sd[var] / dm4[var]:.3f}; "
            f"Var(stratified b=3) / Var(double-MC K=3) = {st[var] / dm[var]:.3f}"
        )
    lines += [
        "",
        "Caveat: double-MC's 1/t weight makes its estimate heavy-tailed (its second moment grows like "
        "log(1/eps) as the floor eps on t shrinks), so a sample variance from few replicates usually "
        "*under*-estimates it; the exact column at the short length has no such problem.",
    ]
    lines += [
        "",
        "## Log-ratio between two nearby models",
        "",
        "θ' = θ after one Adam step (lr 1e-4) on LLaDA's SFT loss over the sampled sequences. "
        "Variance of `Ê_θ'(y) − Ê_θ(y)` with the same generators on both sides (shared times and masks) "
        f"vs independent generators. Exact mean log-ratio at L={sh['length']}: {sh['exact_log_ratio_mean']:+.4f}.",
        "",
        "| L | estimator | settings | NFE | var shared | var independent | independent / shared | bias shared (vs exact) |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for key in ("short", "long"):
        L = res[key]["length"]
        for r in res[key]["log_ratio"]:
            if key == "short" and r["nfe"] not in (1, 3, 16):
                continue
            s, i = r["shared"], r["independent"]
            ratio = i["variance"] / s["variance"] if s["variance"] > 0 else float("inf")
            bias = f"{s['bias']:+.4f} ± {s['bias_se']:.4f}" if "bias" in s else "—"
            lines.append(
                f"| {L} | {r['estimator']} | {r['settings']} | {r['nfe']} | {s['variance']:.3g} | "
                f"{i['variance']:.3g} | {ratio:.0f}× | {bias} |"
            )
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key in zip(axes, ("short", "long"), strict=True):
        rows = res[key]["rows"]
        for (name, marker), anti in ((e, a) for e in zip(ESTIMATORS, "osD^", strict=True) for a in (False, True)):
            # short completions: the exact variance where it is known (double-MC's sample variance is biased
            # low); antithetic variants (dashed, same colour): measured
            pts = [(r["nfe"], r.get("exact_variance", r["variance"])) for r in rows
                   if r["estimator"] == name and r.get("antithetic", False) == anti]
            if pts:
                x, y = zip(*pts, strict=True)
                colour = {"color": ax.lines[-1].get_color(), "markerfacecolor": "none"} if anti else {}
                ax.plot(x, y, marker=marker, label=f"{name}, antithetic" if anti else name,
                        linestyle=("--" if anti else "-") if len(pts) > 1 else "none", **colour)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(list(BUDGETS), [str(b) for b in BUDGETS])
        ax.set_xlabel("forward passes per sequence (NFE)")
        ax.set_ylabel("variance of the sequence estimate")
        kind = "exact variance" if key == "short" else f"measured, {res[key]['reps_per_seq']} replicates/seq"
        if key == "short" and res.get("antithetic"):
            kind += "; antithetic, dashed: measured"
        ax.set_title(f"L = {res[key]['length']} ({kind}; {res['model']})", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="model name or path (default: the embedded tiny model)")
    ap.add_argument("--random-init", action="store_true", help="use a randomly initialised tiny model")
    ap.add_argument("--task", default=None, help="task for prompts (default: the default task, countdown)")
    ap.add_argument("--num-seqs", type=int, default=8, help="sampled completions")
    ap.add_argument("--short-length", type=int, default=8, help="L for the comparison with exact_elbo (≤ 10)")
    ap.add_argument("--long-length", type=int, default=64, help="realistic completion length (64-256)")
    ap.add_argument("--short-reps", type=int, default=400, help="replicates per sequence, short completions")
    ap.add_argument("--one-step-reps", type=int, default=24, help="replicates per sequence for one_step_unmasking (short)")
    ap.add_argument("--long-reps", type=int, default=16, help="replicates per sequence, realistic completions")
    ap.add_argument("--temperature", type=float, default=0.9, help="sampling temperature of the rollouts (d1: 0.9)")
    ap.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of the step that makes θ'")
    ap.add_argument("--batch-size", type=int, default=64, help="rows per forward pass")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a busy CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "estimator_variance"), help="output path without suffix")
    ap.add_argument("--antithetic", action="store_true",
                    help="also measure the antithetic=True variant of each ELBO estimator at the even budgets")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 sequences, few replicates")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.num_seqs, args.short_reps, args.one_step_reps, args.long_reps, args.long_length = 3, 40, 8, 3, 32
    if args.short_length > 10:
        ap.error("--short-length must be ≤ 10 (exact_elbo enumerates 2^L - 1 masks)")
    res = run(args)
    md = markdown(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    out.with_suffix(".md").write_text(md)
    plot(res, out.with_suffix(".png"))
    print(md)
    return res


if __name__ == "__main__":
    main()
