"""ESPO's k2 sequence KL and BGPO's linear lower bound in ``sequence_clipped_loss``, their
``GDPOConfig`` fields, and the ESPO / BGPO recipe configs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from dlm_trl.losses import KL_ESTIMATORS, RATIO_FORMS, sequence_clipped_loss

ROOT = Path(__file__).resolve().parents[1]


def _rows(seed=0, B=4, L=6, D=3):
    g = torch.Generator().manual_seed(seed)
    draws = torch.randn(B, D, L, generator=g, dtype=torch.float64) - 2.0  # per-draw per-token contributions
    old_draws = draws + 0.3 * torch.randn(B, D, L, generator=g, dtype=torch.float64)
    mask = torch.ones(B, L)
    mask[1, 4:] = 0
    return draws, old_draws, mask


def test_sequence_k2_by_hand():
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -0.3, -4.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.2, -0.1, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    A = torch.zeros(2)  # isolate the KL term
    # row 0: Δ = -3.5 - (-3.0) = -0.5, n = 3; row 1: Δ = -0.5 - (-0.3) = -0.2 (padding ignored)
    want_k2 = (0.5 * 0.25 / 3 + 0.5 * 0.04 / 3) / 2
    want_norm = (0.5 * (0.5 / 3) ** 2 + 0.5 * (0.2 / 3) ** 2) / 2
    for est, want in (("sequence_k2", want_k2), ("sequence_k2_normalized", want_norm)):
        loss, metrics = sequence_clipped_loss(
            logps, logps, A, mask, epsilon=0.2, ref_logps=ref, beta=1.0, kl_estimator=est
        )
        assert loss.item() == pytest.approx(want, rel=1e-6)
        assert metrics["kl"].item() == pytest.approx(want, rel=1e-6)
    # true-length normaliser: row 1 has n = 2
    loss, _ = sequence_clipped_loss(logps, logps, A, mask, epsilon=0.2, ref_logps=ref, beta=1.0,
                                    kl_estimator="sequence_k2", length="true")
    assert loss.item() == pytest.approx((0.5 * 0.25 / 3 + 0.5 * 0.04 / 2) / 2, rel=1e-6)


def test_sequence_k2_gradient_is_the_normalised_difference():
    logps = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, -0.5]])
    loss, _ = sequence_clipped_loss(logps, logps.detach(), torch.zeros(1), torch.ones(1, 3), epsilon=0.2,
                                    ref_logps=ref, beta=2.0, kl_estimator="sequence_k2")
    loss.backward()
    assert torch.allclose(logps.grad, torch.full((1, 3), 2.0 * (-0.5) / 3))


@pytest.mark.parametrize("length", ["padded", "true"])
@pytest.mark.parametrize("use_draws", [True, False])
def test_bgpo_on_policy_value_and_gradient_equal_the_exp_form(length, use_draws):
    draws, _, mask = _rows()
    A = torch.tensor([1.0, -0.5, 2.0, -1.5], dtype=torch.float64)
    grads, values = [], []
    for form in RATIO_FORMS:
        d = draws.clone().requires_grad_(True)
        logps = d.mean(1)  # [B, L]: the estimate is the mean of the draws
        kw = {}
        if form == "bgpo_linear" and use_draws:
            kw = {"draw_logps": (d * mask[:, None]).sum(-1), "old_draw_logps": (draws * mask[:, None]).sum(-1)}
        loss, _ = sequence_clipped_loss(logps, logps.detach(), A, mask, epsilon=0.2, length=length,
                                        ratio_form=form, **kw)
        loss.backward()
        values.append(loss.item())
        grads.append(d.grad.clone())
    assert values[0] == pytest.approx(values[1], abs=1e-12)
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-12)


def test_bgpo_off_policy_is_a_lower_bound_of_the_objective():
    """Objective = −loss. With per-draw values, −loss_bgpo ≤ mean_b A·exp(x̄) (unclipped), per sign of A."""
    for seed in range(5):
        draws, old_draws, mask = _rows(seed)
        logps, old = draws.mean(1), old_draws.mean(1)
        for A in (torch.tensor([1.0, 0.5, 2.0, 0.1]), torch.tensor([-1.0, -0.5, -2.0, -0.1])):
            A = A.double()
            exp_loss, _ = sequence_clipped_loss(logps, old, A, mask, epsilon=0.99, epsilon_high=1e6)  # no clip
            bg_loss, _ = sequence_clipped_loss(
                logps, old, A, mask, epsilon=0.99, ratio_form="bgpo_linear",
                draw_logps=(draws * mask[:, None]).sum(-1), old_draw_logps=(old_draws * mask[:, None]).sum(-1),
            )
            assert -bg_loss.item() <= -exp_loss.item() + 1e-12
            assert -bg_loss.item() < -exp_loss.item() - 1e-9  # strictly below off-policy


def test_bgpo_by_hand():
    """One row, L = 2, D = 2, padded: x_d = Δ_d / 2."""
    d = torch.tensor([[[-1.0, -1.0], [-2.0, 0.0]]])  # draw sums -2, -2
    o = torch.tensor([[[-1.5, -1.5], [-1.0, -1.0]]])  # draw sums -3, -2 → x = (0.5, 0)
    logps, old = d.mean(1), o.mean(1)
    kw = {"draw_logps": d.sum(-1), "old_draw_logps": o.sum(-1), "ratio_form": "bgpo_linear", "epsilon": 0.2}
    loss, _ = sequence_clipped_loss(logps, old, torch.tensor([2.0]), torch.ones(1, 2), **kw)
    assert loss.item() == pytest.approx(-2.0 * (1 + 0.25))
    loss, _ = sequence_clipped_loss(logps, old, torch.tensor([-2.0]), torch.ones(1, 2), **kw)
    assert loss.item() == pytest.approx(2.0 * (torch.exp(torch.tensor(0.5)).item() + 1.0) / 2)


def test_loss_option_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="ratio_form"):
        sequence_clipped_loss(x, x, torch.zeros(2), torch.ones(2, 3), epsilon=0.2, ratio_form="linear")
    with pytest.raises(ValueError, match="both"):
        sequence_clipped_loss(x, x, torch.zeros(2), torch.ones(2, 3), epsilon=0.2, ratio_form="bgpo_linear",
                              draw_logps=torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\[B=2, D\]"):
        sequence_clipped_loss(x, x, torch.zeros(2), torch.ones(2, 3), epsilon=0.2, ratio_form="bgpo_linear",
                              draw_logps=torch.zeros(3, 4), old_draw_logps=torch.zeros(3, 4))
    assert "sequence_k2" in KL_ESTIMATORS


def test_gdpo_config_fields():
    from dlm_trl.trainers.gdpo import GDPOConfig

    with pytest.raises(ValueError, match="ratio_form"):
        GDPOConfig(output_dir="/tmp/x", use_cpu=True, ratio_form="nope")
    cfg = GDPOConfig(output_dir="/tmp/x", use_cpu=True, ratio_form="bgpo_linear", kl_estimator="sequence_k2")
    assert cfg.ratio_form == "bgpo_linear" and cfg.kl_estimator == "sequence_k2"


# ----------------------------------------------------------------------------- recipe configs

NEW_CONFIGS = [f"{a}_llada_{t}.yaml" for a in ("espo", "bgpo") for t in ("gsm8k", "countdown")]


def _recipe():
    spec = importlib.util.spec_from_file_location("recipe_gdpo", ROOT / "recipes" / "gdpo_llada.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", NEW_CONFIGS)
def test_espo_bgpo_configs_parse(name):
    from trl import ModelConfig, TrlParser

    from dlm_trl.registry import load_estimator
    from dlm_trl.trainers.recipe_utils import RecipeArguments

    path = ROOT / "recipes" / "configs" / name
    header = path.read_text().splitlines()[:5]
    assert any(f"recipes/gdpo_llada.py --config recipes/configs/{name}" in line for line in header)
    recipe = _recipe()
    parser = TrlParser((RecipeArguments, recipe.GDPOConfig, ModelConfig))
    script_args, args, model_args = parser.parse_args_and_config(["--config", str(path), "--use_cpu", "true"])
    assert model_args.model_name_or_path == "GSAI-ML/LLaDA-8B-Instruct" and args.bf16
    assert script_args.task in name
    est = load_estimator(args.estimator, **args.estimator_kwargs)
    if name.startswith("espo"):
        assert args.kl_estimator == "sequence_k2" and args.ratio_form == "exp" and est.antithetic
        assert args.beta > 0 and args.sequence_epsilon is None
    else:
        assert args.ratio_form == "bgpo_linear" and est.constant_memory and est.nfe(256) == 16


# ----------------------------------------------------------------------------- trainer smoke


@pytest.mark.parametrize(
    "overrides",
    [
        {"kl_estimator": "sequence_k2", "beta": 0.01, "sequence_epsilon": None,  # ESPO
         "estimator": ("stratified_elbo", {"num_samples": 2, "antithetic": True})},
        {"ratio_form": "bgpo_linear", "num_iterations": 1,  # BGPO
         "estimator": ("double_mc_elbo", {"num_samples": 4, "constant_memory": True})},
    ],
    ids=["espo", "bgpo"],
)
def test_gdpo_trainer_runs_espo_and_bgpo_settings(overrides, tmp_path, monkeypatch):
    import math

    import dlm_trl.trainers.gdpo as gdpo
    import tests.test_trainers as tt
    from dlm_trl.registry import load_estimator

    name, kw = overrides["estimator"]
    overrides = {**overrides, "estimator": load_estimator(name, **kw)}  # an instance: the trainer's constructor

    seen = []
    original = gdpo.sequence_clipped_loss

    def recording(*a, **kw):
        seen.append(kw)
        return original(*a, **kw)

    monkeypatch.setattr(gdpo, "sequence_clipped_loss", recording)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = tt.tokenizer.__wrapped__()
        data = tt.dataset.__wrapped__()
        trainer = tt.make_trainer("gdpo", tok, data, tmp_path, max_steps=1, **overrides)
        trainer.train()
    finally:
        torch.set_num_threads(n)
    assert seen and all(kw["ratio_form"] == overrides.get("ratio_form", "exp") for kw in seen)
    assert all(kw["kl_estimator"] == overrides.get("kl_estimator", "token_k3") for kw in seen)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(v) for v in losses)
