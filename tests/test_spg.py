"""SPG (arXiv 2510.09541): the ``eubo`` / ``spg_elbo`` estimators, ``sandwiched_loss`` and ``SPGTrainer``.

The oracle enumerates generation orders: under ``masking="random"`` every permutation of the L
positions, under ``masking="block"`` the semi-autoregressive orders (blocks left to right, any order
inside a block). Token i's context under an order is the set of positions unmasked before it, so

    ELBO = Σ_i mean_σ log p_i(σ),   EUBO = Σ_i (1/β) log mean_σ p_i(σ)^β,
    log π_any-order = log mean_σ Π_i p_i(σ)

are computed by brute force from model forwards, independently of the estimators' masks and weights.

* (a) exact joint model: ELBO = log p(y) under both orders; EUBO ≥ log p(y), → log p(y) as β → 0 and
  strictly above it at β = 1.5 (the EUBO is not tight); the estimators' Monte Carlo means match;
* (b) random tiny model: ELBO ≤ log π_any-order ≤ EUBO(β = L) (Hölder), ELBO ≤ EUBO(1.5); the ELBO and
  the EUBO's inner power mean are unbiased (mean over many generators within 4 standard errors), and
  the EUBO estimate converges to the enumerated EUBO with many draws;
* (c) block-wise masks have the documented structure; ``eubo`` / ``spg_elbo`` / ``bounds`` share masks;
* (d) ``sandwiched_loss`` against a hand computation, gradients on the right side;
* (e) ``SPGTrainer`` trains on the tiny model; old and current estimates share masks (``spg_clip``);
* (f) invalid settings raise errors that name the option.
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from dlm_trl.estimators import row_generators  # noqa: E402
from dlm_trl.losses import sandwiched_loss  # noqa: E402
from dlm_trl.masking import apply_mask, token_log_probs  # noqa: E402
from dlm_trl.models import DLM, TinyDLMConfig, TinyDLMForMaskedDiffusion  # noqa: E402
from dlm_trl.registry import load_estimator  # noqa: E402
from dlm_trl.testing.joint import JointTableDLM  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- oracle


def generation_orders(L: int, block_length: int | None) -> list[list[int]]:
    if block_length is None:
        return [list(p) for p in itertools.permutations(range(L))]
    blocks = [range(s, min(s + block_length, L)) for s in range(0, L, block_length)]
    return [sum((list(p) for p in combo), []) for combo in itertools.product(*(itertools.permutations(b) for b in blocks))]


@torch.no_grad()
def oracle(model, prompt: torch.Tensor, y: torch.Tensor, block_length: int | None):
    """``log p_i(σ)`` ``[n_orders, L]`` (float64) for one row: prompt ``[P]``, completion ``y [L]``."""
    L = y.shape[0]
    orders = generation_orders(L, block_length)
    masks = []
    for sigma in orders:
        for k in range(L):
            m = torch.zeros(L, dtype=torch.bool)
            m[sigma[k:]] = True  # σ[k] and everything unmasked after it are still masked
            masks.append(m)
    masks = torch.stack(masks)  # [n*L, L]
    ids = torch.cat([prompt.expand(masks.shape[0], -1), apply_mask(y.expand(masks.shape[0], -1), masks, model.mask_token_id)], 1)
    logits = model(ids)
    lp = token_log_probs(logits[:, prompt.shape[0]:], y.expand(masks.shape[0], -1)).double()  # [n*L, L]
    out = torch.zeros(len(orders), L, dtype=torch.float64)
    for o, sigma in enumerate(orders):
        for k, i in enumerate(sigma):
            out[o, i] = lp[o * L + k, i]
    return out


def elbo_of(table):
    return table.mean(0).sum()


def eubo_of(table, beta):
    return (torch.logsumexp(beta * table, 0) - torch.log(torch.tensor(float(table.shape[0])))).sum() / beta


def any_order_log_lik(table):
    return torch.logsumexp(table.sum(1), 0) - torch.log(torch.tensor(float(table.shape[0])))


def joint_model():
    return JointTableDLM(vocab_size=3, length=4, prompt_length=2, seed=0)


def tiny_model(seed: int = 0) -> DLM:
    torch.manual_seed(seed)
    cfg = TinyDLMConfig(
        vocab_size=24, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, initializer_range=0.3, mask_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    return DLM.wrap(TinyDLMForMaskedDiffusion(cfg).eval())


def mc_rows(est, model, prompt, y, n: int, what: str):
    """``n`` independent estimates of one row (one generator each) → ``[n, L]``."""
    P = prompt.expand(n, -1)
    Y = y.expand(n, -1)
    M = torch.ones_like(Y)
    gens = row_generators(range(1000, 1000 + n))
    with torch.no_grad():
        if what == "elbo":
            return est.bounds(model, P, Y, M, generator=gens)[0].double()
        return est.power_mean(model, P, Y, M, generator=gens)


def assert_within_se(samples: torch.Tensor, target: torch.Tensor, k: float = 4.0):
    mean, se = samples.mean(0), samples.std(0) / samples.shape[0] ** 0.5
    assert ((mean - target).abs() <= k * se + 1e-6).all(), f"mean {mean} vs exact {target} (se {se})"


# ----------------------------------------------------------------------------- (a) exact joint model


@pytest.mark.parametrize("block_length", [None, 2])
def test_bounds_on_the_exact_joint_model(block_length):
    model = joint_model()
    y = model.sample(3, generator=torch.Generator().manual_seed(1))  # [3, 4]
    prompt = torch.zeros(2, dtype=torch.long)
    for row in y:
        table = oracle(model, prompt, row, block_length)
        log_p = model.log_prob(row[None])[0].detach()
        assert torch.allclose(elbo_of(table), log_p, atol=1e-5)  # tight
        assert eubo_of(table, 1.5) > log_p + 1e-3  # not tight for β > 0 ...
        assert torch.allclose(eubo_of(table, 1e-4), log_p, atol=1e-3)  # ... but → log p as β → 0
        for beta in (0.5, 1.0, 1.5, 4.0):
            assert eubo_of(table, beta) >= log_p - 1e-9


@pytest.mark.parametrize("masking", ["random", "block"])
def test_monte_carlo_means_on_the_exact_joint_model(masking):
    model = joint_model()
    y = model.sample(1, generator=torch.Generator().manual_seed(2))[0]
    prompt = torch.zeros(2, dtype=torch.long)
    est = load_estimator("eubo", masking=masking, block_length=2, num_samples=2, beta=1.5)
    table = oracle(model, prompt, y, 2 if masking == "block" else None)
    log_p = model.log_prob(y[None])[0].detach()
    elbo = mc_rows(est, model, prompt, y, 400, "elbo")  # [400, L]
    assert_within_se(elbo.sum(1, keepdim=True), log_p.reshape(1))
    power = mc_rows(est, model, prompt, y, 400, "power")
    assert_within_se(power, torch.exp(1.5 * table).mean(0))


# ----------------------------------------------------------------------------- (b) random tiny model


@pytest.mark.parametrize("masking", ["random", "block"])
def test_sandwich_and_unbiasedness_on_a_random_model(masking):
    model = tiny_model(0)
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(4, 24, (3,), generator=g)
    y = torch.randint(4, 24, (4,), generator=g)
    bl = 2 if masking == "block" else None
    table = oracle(model, prompt, y, bl)
    elbo, log_pi = elbo_of(table), any_order_log_lik(table)
    assert elbo <= log_pi + 1e-9  # Jensen
    assert log_pi <= eubo_of(table, 4.0) + 1e-9  # Hölder: β ≥ number of tokens
    assert elbo < eubo_of(table, 1.5)  # power mean ≥ geometric mean, strictly on a non-degenerate model
    est = load_estimator("eubo", masking=masking, block_length=2, num_samples=2, beta=1.5)
    assert_within_se(mc_rows(est, model, prompt, y, 300, "elbo"), table.mean(0))  # per token
    assert_within_se(mc_rows(est, model, prompt, y, 300, "power"), torch.exp(1.5 * table).mean(0))
    # The EUBO estimate (a log of a mean) is consistent: many draws of one row approach the enumerated EUBO.
    many = load_estimator("eubo", masking=masking, block_length=2, num_samples=600, beta=1.5)
    with torch.no_grad():
        _, eubo = many.bounds(model, prompt[None], y[None], torch.ones(1, 4, dtype=torch.long),
                              generator=row_generators([7]))
    assert abs(float(eubo.sum()) - float(eubo_of(table, 1.5))) < 0.05 * abs(float(eubo_of(table, 1.5)))


# ----------------------------------------------------------------------------- (c) masks


def test_block_masks_have_the_documented_structure():
    L, bl, K = 10, 3, 3  # blocks {0,1,2} {3,4,5} {6,7,8} {9}
    cmask = torch.ones(5, L, dtype=torch.long)
    cmask[1, 7:] = 0
    cmask[2, 2:] = 0
    blk = torch.arange(L) // bl
    for length in ("padded", "true"):
        est = load_estimator("eubo", masking="block", block_length=bl, num_samples=K, length=length)
        d = est.draw_masks(cmask, generator=row_generators(range(5)))
        maskable = torch.ones_like(cmask, dtype=torch.bool) if length == "padded" else cmask.bool()
        for r in range(5 * K):
            b, j = r // K, int(d.block[r])
            can = maskable[b]
            n_blocks = int(torch.unique(blk[can]).numel())
            assert can[blk == j].any(), "a block without maskable positions was chosen"
            assert not d.noise[r][blk < j].any(), "an earlier block is masked"
            assert torch.equal(d.noise[r][blk > j], can[blk > j]), "a later block is not fully masked"
            assert not d.noise[r][~can].any(), "a position that is not maskable is masked"
            n_j, count = int(can[blk == j].sum()), int(d.noise[r][blk == j].sum())
            assert 1 <= count <= n_j
            assert torch.equal(d.scored[r], d.noise[r] & (blk == j))  # scoring='block': the chosen block only
            assert d.weight[r].item() == pytest.approx(n_blocks * n_j / count)
        for b in range(5):  # distinct blocks across the K draws while K ≤ J_b
            chosen = d.block[b * K:(b + 1) * K].tolist()
            n_blocks = int(torch.unique(blk[maskable[b]]).numel())
            assert len(set(chosen)) == min(K, n_blocks)
    ref = load_estimator("eubo", masking="block", block_length=bl, num_samples=K, scoring="masked")
    d = ref.draw_masks(cmask, generator=row_generators(range(5)))
    assert torch.equal(d.scored, d.noise)
    assert torch.allclose(d.weight, L / d.noise.sum(1).float())  # n / m, the reference code's 1/t


def test_blocks_are_chosen_uniformly_and_random_counts_cover_one_to_n():
    cmask = torch.ones(2000, 8, dtype=torch.long)
    est = load_estimator("eubo", masking="block", block_length=2, num_samples=1)
    d = est.draw_masks(cmask, generator=row_generators(range(2000)))
    freq = torch.bincount(d.block, minlength=4).float() / 2000
    assert torch.allclose(freq, torch.full((4,), 0.25), atol=0.04)
    rnd = load_estimator("eubo", masking="random", num_samples=1).draw_masks(cmask, generator=row_generators(range(2000)))
    counts = torch.bincount(rnd.noise.sum(1), minlength=9).float()[1:] / 2000
    assert rnd.noise.sum(1).min() >= 1 and torch.allclose(counts, torch.full((8,), 1 / 8), atol=0.04)
    assert torch.allclose(rnd.weight, 8 / rnd.noise.sum(1).float())


def test_eubo_spg_elbo_and_bounds_share_masks():
    model = tiny_model(1)
    g = torch.Generator().manual_seed(3)
    prompt, y = torch.randint(4, 24, (3, 4), generator=g), torch.randint(4, 24, (3, 6), generator=g)
    cmask = torch.ones(3, 6, dtype=torch.long)
    cmask[1, 4:] = 0
    kw = dict(masking="block", block_length=2, num_samples=3)
    with torch.no_grad():
        lo, up = load_estimator("eubo", **kw).bounds(model, prompt, y, cmask, generator=row_generators([4, 5, 6]))
        e = load_estimator("spg_elbo", **kw)(model, prompt, y, cmask, generator=row_generators([4, 5, 6]))
        u = load_estimator("eubo", **kw)(model, prompt, y, cmask, generator=row_generators([4, 5, 6]))
    assert torch.equal(lo, e) and torch.equal(up, u)
    assert (up[cmask == 0] == 0).all()
    # "mean" normalisation differs from "self" by a θ-independent constant per scored token
    with torch.no_grad():
        um = load_estimator("eubo", normalize="mean", **kw)(model, prompt, y, cmask, generator=row_generators([4, 5, 6]))
    assert torch.equal(um != 0, u != 0)


# ----------------------------------------------------------------------------- (d) loss


def test_sandwiched_loss_against_a_hand_computation():
    elbo = torch.tensor([[-1.0, -2.0], [-3.0, -4.0], [-0.5, -0.5]], requires_grad=True)
    eubo = torch.tensor([[-0.5, -1.0], [-2.0, -9.0], [-0.1, -0.2]], requires_grad=True)
    A = torch.tensor([1.0, -2.0, 0.0])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1]])
    loss, metrics = sandwiched_loss(elbo, eubo, None, None, A, mask, mixture=0.5)
    E0, E1, U1 = -3.0, -3.0, -2.0  # row sums over counted tokens
    S1 = 0.5 * U1 + 0.5 * E1
    assert loss.item() == pytest.approx((-1.0 * E0 + 2.0 * S1) / 5.0)  # Σ −A S / Σ n, n = (2, 1, 2)
    loss.backward()
    assert torch.allclose(elbo.grad, torch.tensor([[-0.2, -0.2], [0.2, 0.0], [0.0, 0.0]]))
    assert torch.allclose(eubo.grad, torch.tensor([[0.0, 0.0], [0.2, 0.0], [0.0, 0.0]]))  # only the A < 0 row
    assert metrics["spg/frac_positive"].item() == pytest.approx(1 / 3)
    assert metrics["spg/frac_negative"].item() == pytest.approx(1 / 3)
    # pure EUBO, sequence normalisation: the negative row's ELBO gets no gradient
    elbo.grad, eubo.grad = None, None
    loss, _ = sandwiched_loss(elbo, eubo, None, None, A, mask, mixture=1.0, normalization="sequence")
    assert loss.item() == pytest.approx((-1.0 * E0 + 2.0 * U1) / 3.0)
    loss.backward()
    assert torch.allclose(elbo.grad, torch.tensor([[-1 / 3, -1 / 3], [0.0, 0.0], [0.0, 0.0]]))
    assert torch.allclose(eubo.grad, torch.tensor([[0.0, 0.0], [2 / 3, 0.0], [0.0, 0.0]]))
    # clipped sequence ratio, on-policy: r = 1, loss = mean −A, gradient −A/(3 n) with n = L = 2
    elbo.grad, eubo.grad = None, None
    loss, metrics = sandwiched_loss(elbo, eubo, None, None, A, mask, clip=True, epsilon=0.2)
    assert loss.item() == pytest.approx((-1.0 + 2.0) / 3.0) and metrics["ratio/mean"].item() == pytest.approx(1.0)
    loss.backward()
    assert torch.allclose(elbo.grad[0], torch.tensor([-1 / 6, -1 / 6]))
    assert torch.allclose(eubo.grad[1], torch.tensor([2 * 0.5 / 6, 0.0]))
    # keep: a dropped row leaves the loss and the normaliser
    loss_keep, _ = sandwiched_loss(elbo, eubo, None, None, A, mask, keep=torch.tensor([1, 0, 1]))
    assert loss_keep.item() == pytest.approx(-1.0 * E0 / 4.0)


def test_sandwiched_loss_refuses_bad_arguments():
    x = torch.zeros(2, 3)
    A, m = torch.tensor([1.0, -1.0]), torch.ones(2, 3)
    with pytest.raises(ValueError, match="mixture"):
        sandwiched_loss(x, x, None, None, A, m, mixture=1.5)
    with pytest.raises(ValueError, match="needs eubo_logps"):
        sandwiched_loss(x, None, None, None, A, m, mixture=0.5)
    with pytest.raises(ValueError, match="normalization"):
        sandwiched_loss(x, x, None, None, A, m, normalization="constant")
    loss, _ = sandwiched_loss(x, None, None, None, A, m, mixture=0.0)  # ELBO only: fine without an EUBO
    assert loss.item() == 0.0


# ----------------------------------------------------------------------------- (e) trainer


@pytest.fixture(scope="module")
def tokenizer():
    from dlm_trl.models.tiny.train import build_tokenizer
    from dlm_trl.tasks import get_task

    rows = get_task("countdown").rows("train", 40, seed=1)
    return build_tokenizer([r["prompt"][0]["content"] for r in rows] + [r["reference"] for r in rows], vocab_size=300)


@pytest.fixture(scope="module")
def dataset():
    from dlm_trl.tasks import get_task

    return get_task("countdown").dataset("train", 8, seed=0)


def text_reward(prompts, completions, **kwargs):
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(sum(map(ord, t)) % 5) / 4.0 for t in texts]


COMMON = dict(
    per_device_train_batch_size=4, num_generations=4, gradient_accumulation_steps=2, max_steps=2,
    num_iterations=2, gen_length=8, block_length=4, diffusion_steps=4, learning_rate=1e-2, bf16=False,
    use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
)


def make_spg(tokenizer, dataset, tmp_path, **overrides):
    from dlm_trl.trainers import SPGConfig, SPGTrainer

    torch.manual_seed(0)
    cfg = TinyDLMConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=256, mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    estimator = overrides.pop("estimator_instance", None)
    args = SPGConfig(output_dir=str(tmp_path / "spg"), **{**COMMON, **overrides})
    return SPGTrainer(model=TinyDLMForMaskedDiffusion(cfg), reward_funcs=[text_reward], args=args,
                      train_dataset=dataset, processing_class=tokenizer, estimator=estimator)


def test_spg_trainer_steps_and_shares_masks(tokenizer, dataset, tmp_path):
    trainer = make_spg(tokenizer, dataset, tmp_path, spg_clip=True)
    assert trainer.estimator.name == "eubo" and trainer.estimator.block_length == 4
    assert trainer.estimator.beta == 1.5 and trainer.estimator.num_samples == 2
    trainer._iteration0_on_policy = False  # force a separate old forward for the first inner iteration too
    calls = []

    def hook(module, args, kwargs):
        seeds = trainer._estimating_seeds
        if seeds is None:  # a sampler forward
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        masked = (ids == trainer.mask_token_id).cpu()
        D = masked.shape[0] // seeds.shape[0]
        phase = "current" if torch.is_grad_enabled() else "old"
        for seed, rows in zip(seeds.tolist(), masked.view(seeds.shape[0], D, -1), strict=True):
            calls.append((phase, seed, rows.clone()))

    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    handle = trainer.model.register_forward_pre_hook(hook, with_kwargs=True)
    trainer.train()
    handle.remove()
    assert trainer.state.global_step == 2
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed, "no parameter moved"
    by_phase: dict[str, dict[int, torch.Tensor]] = {"old": {}, "current": {}}
    for phase, seed, rows in calls:
        by_phase[phase].setdefault(seed, rows)
    assert len(by_phase["current"]) == 2 * 8
    for seed, rows in by_phase["current"].items():
        assert torch.equal(by_phase["old"][seed], rows), "old and current masks differ for a row"
    logs = {k for entry in trainer.state.log_history for k in entry}
    assert {"spg/frac_negative", "spg/eubo_per_token_mean", "ratio/mean"} <= logs
    first = [e["ratio/mean"] for e in trainer.state.log_history if "ratio/mean" in e][0]
    assert first == pytest.approx(1.0, abs=1e-4)  # same masks: the first inner step's ratio is 1


def test_spg_trainer_default_has_no_old_forward(tokenizer, dataset, tmp_path):
    trainer = make_spg(tokenizer, dataset, tmp_path, max_steps=1)
    trainer.train()
    assert trainer.nfe_counts["old"] == 0 and trainer.nfe_counts["policy"] > 0


# ----------------------------------------------------------------------------- (f) errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta": 0.04}, "beta=0.04 is not supported"),
        ({"epsilon": 0.3}, "epsilon=0.3 is not supported"),
        ({"delta": 2.0}, "delta=2.0 is not supported"),
        ({"mixture": 1.5}, "mixture"),
        ({"spg_beta": 0.0}, "spg_beta"),
        ({"spg_masking": "blocks"}, "spg_masking"),
        ({"spg_normalization": "constant"}, "spg_normalization"),
        ({"loss_type": "dapo"}, "loss_type='dapo' is not supported"),
        ({"importance_sampling_level": "token"}, "importance_sampling_level='token' is not supported"),
        ({"estimator_kwargs": {"beta": 2.0}}, "conflicts with spg_beta"),
        ({"estimator_kwargs": {"scoring": "nope"}}, "scoring"),
    ],
)
def test_config_rejects_invalid_settings(kwargs, match, tmp_path):
    from dlm_trl.trainers import SPGConfig

    with pytest.raises(ValueError, match=match):
        SPGConfig(output_dir=str(tmp_path), **{**COMMON, **kwargs})


def test_estimator_arguments_are_checked_and_trainer_needs_bounds(tokenizer, dataset, tmp_path):
    for kwargs, match in (({"beta": 0}, "beta"), ({"masking": "x"}, "masking"), ({"num_samples": 0}, "num_samples"),
                          ({"block_length": 0}, "block_length"), ({"normalize": "x"}, "normalize")):
        with pytest.raises(ValueError, match=match):
            load_estimator("eubo", **kwargs)
    with pytest.raises(TypeError, match="bounds"):
        make_spg(tokenizer, dataset, tmp_path, estimator="sdmc_elbo")


def test_eubo_warns_when_beta_is_below_the_theorems_range():
    """SPG's upper-bound theorem needs β ≥ 1 (arXiv 2510.09541): a smaller β is allowed, with a warning."""
    import warnings

    with pytest.warns(UserWarning, match="beta >= 1"):
        load_estimator("eubo", beta=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_estimator("eubo", beta=1.0)
