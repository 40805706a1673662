import pytest
import torch

from dlm_trl.masking import (
    apply_mask,
    bernoulli_mask,
    complement_mask,
    completion_maskable,
    count_mask,
    forward_process,
    sample_times,
    sft_loss,
)


def test_bernoulli_mask_rate_matches_t():
    B, T = 4, 20_000
    t = torch.tensor([0.1, 0.3, 0.5, 0.9])
    maskable = torch.ones(B, T, dtype=torch.bool)
    m = bernoulli_mask(t, maskable, generator=torch.Generator().manual_seed(0))
    rate = m.float().mean(1)
    # binomial std of the rate is sqrt(t(1-t)/T) <= 0.0036; allow 5 sigma
    assert torch.allclose(rate, t, atol=0.018)


def test_prompt_never_masked_and_count_mask_exact():
    B, T = 3, 12
    plen = torch.tensor([4, 6, 2])
    maskable = completion_maskable(plen, T)
    assert maskable.sum(1).tolist() == [8, 6, 10]
    m = count_mask(torch.tensor([3, 10, 0]), maskable, generator=torch.Generator().manual_seed(1))
    assert m.sum(1).tolist() == [3, 6, 0]  # clamped to the maskable count
    for b in range(B):
        assert not m[b, : plen[b]].any()
    # over many draws every maskable position gets masked with equal frequency m/L
    hits = torch.zeros(T)
    g = torch.Generator().manual_seed(2)
    for _ in range(2000):
        hits += count_mask(torch.tensor([2]), maskable[:1], generator=g)[0].float()
    freq = hits[4:] / 2000  # 2 of 8 positions → 0.25 each
    assert torch.allclose(freq, torch.full_like(freq, 0.25), atol=0.05)
    assert hits[:4].sum() == 0


def test_mask_prompt_option():
    maskable = completion_maskable(torch.tensor([3]), 5, mask_prompt=True)
    assert maskable.all()


def test_same_generator_same_mask_different_generator_different():
    maskable = torch.ones(2, 64, dtype=torch.bool)
    t = torch.tensor([0.5, 0.5])
    a = bernoulli_mask(t, maskable, generator=torch.Generator().manual_seed(7))
    b = bernoulli_mask(t, maskable, generator=torch.Generator().manual_seed(7))
    c = bernoulli_mask(t, maskable, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_per_row_generators_are_independent_of_batch():
    maskable = torch.ones(3, 32, dtype=torch.bool)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3)]  # noqa: E731
    full = count_mask(torch.tensor([5, 5, 5]), maskable, generator=gens())
    row1 = count_mask(torch.tensor([5]), maskable[:1], generator=[torch.Generator().manual_seed(2)])
    assert torch.equal(full[1], row1[0])


def test_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    forward_process(torch.zeros(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.bool), 1,
                    generator=torch.Generator().manual_seed(0))
    assert torch.equal(before, torch.random.get_rng_state())


def test_sample_times_stratified_and_antithetic():
    g = torch.Generator().manual_seed(0)
    t = sample_times(8, generator=g, stratified=True, eps=0.0)
    # exactly one draw per stratum [b/8, (b+1)/8)
    assert sorted((t * 8).floor().long().tolist()) == list(range(8))
    ta = sample_times(6, generator=g, antithetic=True, eps=0.0)
    assert torch.allclose(ta[:3] + ta[3:], torch.ones(3))
    with pytest.raises(ValueError, match="even"):
        sample_times(5, antithetic=True)
    assert (sample_times(1000, generator=g) >= 1e-3).all()


def test_complement_and_apply_mask():
    maskable = torch.tensor([[False, True, True, True]])
    m = torch.tensor([[False, True, False, False]])
    assert complement_mask(m, maskable).tolist() == [[False, False, True, True]]
    ids = torch.tensor([[5, 6, 7, 8]])
    assert apply_mask(ids, m, 99).tolist() == [[5, 99, 7, 8]]


class _Uniform(torch.nn.Module):
    """logits = 0 everywhere → CE = log V for every token."""

    def __init__(self, V):
        super().__init__()
        self.V = V
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, ids, attention_mask=None):
        return torch.zeros(*ids.shape, self.V) + 0 * self.w


def test_sft_loss_value_and_gradient():
    V = 16
    model = _Uniform(V)
    ids = torch.randint(2, V, (4, 10))
    plen = torch.tensor([3, 3, 5, 5])
    # with t = 1 every answer token is masked: loss = sum(log V)/1 / len = log V exactly
    loss = sft_loss(model, ids, plen, 1, t=torch.ones(4), generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(torch.log(torch.tensor(float(V))).item(), rel=1e-5)
    loss.backward()
    assert model.w.grad is not None
    # unbiased in t: E[#masked/t] = #maskable, so the mean over many draws is ≈ log V
    g = torch.Generator().manual_seed(1)
    vals = [sft_loss(model, ids, plen, 1, generator=g, eps=0.05).item() for _ in range(400)]
    assert sum(vals) / len(vals) == pytest.approx(torch.log(torch.tensor(float(V))).item(), rel=0.1)
