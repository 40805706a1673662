"""The exact-conditionals oracle model (``dlm_trl.testing.joint``) is itself correct.

Its predictions must be the conditionals of its joint: checked by brute-force marginalisation
over the enumerated table, by the chain rule in two different orders, and by the ELBO being
tight on it (the property the estimator oracle tests rely on).
"""

from __future__ import annotations

import pytest
import torch

from dlm_trl.testing.joint import JointTableDLM


def _brute_conditional(model: JointTableDLM, comp: torch.Tensor, i: int) -> torch.Tensor:
    """``[V]`` p(y_i = v | visible positions of ``comp``) by summing table entries in a loop."""
    p = model.log_probs_table().detach().exp()
    num = torch.zeros(model.vocab_size, dtype=torch.float64)
    for s, seq in enumerate(model.seqs):
        if all(int(comp[j]) in (model.mask_token_id, int(seq[j])) for j in range(model.length)):
            num[int(seq[i])] += p[s]
    return num / num.sum()


def test_logits_are_the_exact_conditionals():
    model = JointTableDLM(3, 3, prompt_length=2, seed=4)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        comp = torch.randint(0, 3, (3,), generator=g)
        comp[torch.rand(3, generator=g) < 0.5] = model.mask_token_id
        ids = torch.cat([torch.zeros(2, dtype=torch.long), comp])[None]
        probs = torch.softmax(model(ids)[0, 2:].double(), -1)  # [L, V+1]
        for i in range(3):
            assert probs[i, -1] == 0  # never the mask token
            assert torch.allclose(probs[i, :3], _brute_conditional(model, comp, i), atol=1e-6)


@pytest.mark.parametrize("order", ["left_to_right", "right_to_left"])
def test_chain_rule_in_any_order_gives_log_prob(order):
    model = JointTableDLM(3, 4, prompt_length=1, seed=2)
    y = model.sample(6, generator=torch.Generator().manual_seed(3))  # [6, 4]
    positions = range(4) if order == "left_to_right" else range(3, -1, -1)
    ids = torch.cat([torch.zeros(6, 1, dtype=torch.long), torch.full_like(y, model.mask_token_id)], 1)
    total = torch.zeros(6, dtype=torch.float64)
    for i in positions:
        logp = torch.log_softmax(model(ids).double(), -1)[torch.arange(6), 1 + i, y[:, i]]
        total += logp
        ids[:, 1 + i] = y[:, i]
    assert torch.allclose(total, model.log_prob(y).detach(), atol=1e-5)


def test_exact_elbo_is_tight_and_differentiable():
    from dlm_trl_estimators.exact_elbo import ExactELBO

    model = JointTableDLM(2, 5, prompt_length=2, seed=1)
    y = model.sample(4, generator=torch.Generator().manual_seed(0))
    prompt = torch.zeros(4, 2, dtype=torch.long)
    elbo = ExactELBO()(model, prompt, y, torch.ones_like(y)).sum(1)
    assert torch.allclose(elbo.double(), model.log_prob(y), atol=1e-5)
    elbo.sum().backward()
    assert model.log_joint.grad is not None and model.log_joint.grad.abs().sum() > 0


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="too many"):
        JointTableDLM(10, 6)
    model = JointTableDLM(2, 3, prompt_length=1)
    with pytest.raises(ValueError, match="positions"):
        model(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens"):
        model.log_prob(torch.full((1, 3), 2))
