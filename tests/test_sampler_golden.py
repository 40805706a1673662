"""Golden tests: dlm-trl's sampler against the upstream LLaDA and Dream samplers, token for token.

Tiny random checkpoints are written by the upstream (hub) code in hub layout and loaded with
it (``dlm_trl.testing.hub_checkpoints``); the upstream samplers run on the upstream module, and
dlm-trl's :func:`~dlm_trl.sampling.generate` on the same module through the ``DLM`` adapter.
Every case prints its number of mismatched completion tokens (run with ``-s``) and asserts 0.

Two things make the comparison exact rather than approximate:

* dlm-trl never samples the mask token: it sets the mask logit to ``−inf`` before drawing
  *and* before scoring, so its confidences are renormalised over the real tokens, while the
  upstream samplers keep the mask token in the softmax. On a trained model the mask token
  has ~0 probability; on a random one it has ~1e-3, enough to reorder near-equal
  confidences. A forward hook therefore gives the tiny models a mask logit of ``−1e4``
  (``exp`` underflows to exactly 0 in float32 and float64), so both samplers see the same
  distribution. Without it the even/``low_confidence`` path still matches in most cases
  but not all (e.g. 18 of 24 tokens differ in one case below).
* Under transformers 5 the upstream Dream ``from_pretrained`` leaves the rotary ``inv_freq``
  buffers uninitialised (non-persistent buffers created on the meta device): logits are
  garbage, sometimes NaN. Every Dream load here calls the model's own
  ``reset_rope_parameters()`` first.

Prompts are unpadded (batch rows of equal length), and the Dream module is called without
an attention mask, as the upstream sampler does for unpadded input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import sys
import types

import pytest
import torch

from dlm_trl.models import DLM
from dlm_trl.sampling import SamplerConfig, generate
from dlm_trl.testing.hub_checkpoints import (
    REFERENCE_MISSING,
    build_remote_code_checkpoint,
    load_remote_code_model,
    reference_dir,
)

pytestmark = pytest.mark.skipif(reference_dir() is None, reason=REFERENCE_MISSING)

MASK_LOGIT = -1.0e4  # see the module docstring


def _suppress_mask_logit(module: torch.nn.Module, mask_id: int):
    def hook(_module, _args, output):
        output.logits[..., mask_id] = MASK_LOGIT
        return output

    return module.register_forward_hook(hook)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden_ckpt")
    return {fam: build_remote_code_checkpoint(fam, root / fam) for fam in ("llada", "dream")}


@pytest.fixture(scope="module")
def llada(checkpoints):
    module = load_remote_code_model(checkpoints["llada"])
    mask_id, eos_id = int(module.config.mask_token_id), int(module.config.eos_token_id)
    handle = _suppress_mask_logit(module, mask_id)
    yield module, DLM(module=module, mask_token_id=mask_id, family="llada", eos_token_id=eos_id)
    handle.remove()


@pytest.fixture(scope="module")
def dream(checkpoints):
    module = load_remote_code_model(checkpoints["dream"])
    module.reset_rope_parameters()  # see the module docstring
    mask_id, eos_id = int(module.config.mask_token_id), int(module.config.eos_token_id)
    handle = _suppress_mask_logit(module, mask_id)
    yield module, DLM(module=module, mask_token_id=mask_id, family="dream", eos_token_id=eos_id)
    handle.remove()


@pytest.fixture(scope="module")
def llada_reference_module():
    """The reference ``llada/generate.py`` (LLaDA's ``generate`` and Fast-dLLM's cached / threshold decoders),
    whose top-level model import is stubbed."""
    path = reference_dir() / "llada" / "generate.py"
    package, stub = types.ModuleType("model"), types.ModuleType("model.modeling_llada")
    stub.LLaDAModelLM = None  # only used by the file's main()
    package.modeling_llada = stub
    saved = {name: sys.modules.get(name) for name in ("model", "model.modeling_llada")}
    sys.modules.update({"model": package, "model.modeling_llada": stub})
    try:
        spec = importlib.util.spec_from_file_location("_dlm_trl_reference_llada_generate", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return module


@pytest.fixture(scope="module")
def llada_reference_generate(llada_reference_module):
    return llada_reference_module.generate


def _prompts(n: int, seed: int, batch: int = 1) -> list[torch.Tensor]:
    """``n`` unpadded prompts ``[batch, P]`` of 3–11 tokens, avoiding EOS/pad (0) and the mask (1)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        P = int(torch.randint(3, 12, (1,), generator=g))
        out.append(torch.randint(2, 1024, (batch, P), generator=g))
    return out


def _report(name: str, reference: torch.Tensor, ours: torch.Tensor) -> int:
    assert reference.shape == ours.shape
    n = int((reference != ours).sum())
    print(f"\n[golden] {name}: {n}/{reference.numel()} mismatched tokens", end="")
    return n


# --------------------------------------------------------------------------- LLaDA


@pytest.mark.parametrize(
    "gen_length,block_length,steps", [(16, 16, 16), (32, 8, 16), (24, 8, 12), (16, 4, 8)]
)
def test_llada_even_low_confidence_equals_reference(
    llada, llada_reference_generate, gen_length, block_length, steps
):
    module, model = llada
    for i, prompt in enumerate(_prompts(3, seed=0)):
        ref, nfe = llada_reference_generate(
            module,
            prompt,
            steps=steps,
            gen_length=gen_length,
            block_length=block_length,
            temperature=0.0,
            remasking="low_confidence",
            mask_id=model.mask_token_id,
        )
        cfg = SamplerConfig(gen_length=gen_length, block_length=block_length, steps=steps, after_eos="keep")
        out = generate(model, prompt, config=cfg)
        P = prompt.shape[1]
        name = f"llada L={gen_length} K={block_length} steps={steps} prompt{i}"
        assert _report(name, ref[:, P:], out.completion_ids) == 0
        assert torch.equal(out.sequences, ref) and nfe == out.num_model_calls == steps


def _cfg_reference(module, prompt, *, steps, gen_length, block_length, cfg_scale, mask_id):
    """LLaDA's block loop (even split, low_confidence, T = 0) on guided logits ℓ_u + (s + 1)(ℓ_c − ℓ_u).

    Upstream Fast-dLLM's ``generate`` has no CFG, so this is the formula written out; the
    unconditional row has every prompt token replaced by the mask, and both rows run as one batch.
    """
    P = prompt.shape[1]
    x = torch.cat([prompt, torch.full((1, gen_length), mask_id, dtype=prompt.dtype)], dim=1)
    spb = steps // (gen_length // block_length)
    for b in range(gen_length // block_length):
        end = P + (b + 1) * block_length
        counts = [block_length // spb + (1 if j < block_length % spb else 0) for j in range(spb)]
        for k in counts:
            uncond = x.clone()
            uncond[:, :P] = mask_id
            both = module(torch.cat([x, uncond])).logits.double()
            guided = both[1:] + (cfg_scale + 1.0) * (both[:1] - both[1:])
            x0 = guided.argmax(-1)
            conf = torch.softmax(guided, -1).gather(-1, x0[..., None]).squeeze(-1)
            eligible = x == mask_id
            eligible[:, end:] = False
            conf = torch.where(eligible, conf, -torch.inf)
            pick = torch.topk(conf[0], k).indices
            x[0, pick] = x0[0, pick]
    return x


@pytest.mark.parametrize("gen_length,block_length,steps,cfg_scale", [(16, 16, 16, 1.0), (32, 8, 16, 0.5)])
def test_llada_cfg_equals_formula(llada, gen_length, block_length, steps, cfg_scale):
    module, model = llada
    for i, prompt in enumerate(_prompts(2, seed=3)):
        ref = _cfg_reference(
            module,
            prompt,
            steps=steps,
            gen_length=gen_length,
            block_length=block_length,
            cfg_scale=cfg_scale,
            mask_id=model.mask_token_id,
        )
        cfg = SamplerConfig(
            gen_length=gen_length,
            block_length=block_length,
            steps=steps,
            cfg_scale=cfg_scale,
            after_eos="keep",
        )
        out = generate(model, prompt, config=cfg)
        name = f"llada cfg={cfg_scale} L={gen_length} K={block_length} steps={steps} prompt{i}"
        assert _report(name, ref[:, prompt.shape[1] :], out.completion_ids) == 0
        assert out.num_model_calls == steps and out.nfe == 2 * steps


# --------------------------------------------------------------------------- Dream

DREAM_CASES = [(16, 16), (16, 8), (32, 10), (24, 7)]  # (gen_length, steps)
DREAM_RULES = {"maskgit_plus": "low_confidence", "topk_margin": "margin", "entropy": "entropy"}


def _dream_reference(module, prompt, *, gen_length, steps, alg, alg_temp=None, eps=1e-3):
    with contextlib.redirect_stdout(io.StringIO()):  # the reference prints its step count and time
        return module.diffusion_generate(
            prompt,
            generation_config=module.generation_config,
            max_new_tokens=gen_length,
            steps=steps,
            temperature=0.0,
            alg=alg,
            alg_temp=alg_temp,
            eps=eps,
            mask_token_id=int(module.config.mask_token_id),
            output_history=False,
            return_dict_in_generate=False,
        )


def _dream_config(gen_length, steps, rule, **kw):
    return SamplerConfig.dream_default(gen_length, steps=steps, remasking=rule, after_eos="keep", **kw)


@pytest.mark.parametrize("alg", list(DREAM_RULES))
@pytest.mark.parametrize("gen_length,steps", DREAM_CASES)
def test_dream_topk_rules_equal_reference(dream, alg, gen_length, steps):
    module, model = dream
    cases = [(f"prompt{i}", p) for i, p in enumerate(_prompts(3, seed=1))]
    cases.append(("batch2", _prompts(1, seed=2, batch=2)[0]))  # two rows of equal length
    for label, prompt in cases:
        ref = _dream_reference(module, prompt, gen_length=gen_length, steps=steps, alg=alg)
        cfg = _dream_config(gen_length, steps, DREAM_RULES[alg])
        assert cfg.schedule == "dream_linspace" and cfg.block_length == gen_length
        before = torch.get_rng_state()
        out = generate(model, prompt, config=cfg)
        assert torch.equal(torch.get_rng_state(), before)  # top-k at T = 0 uses no randomness
        name = f"dream {alg} L={gen_length} steps={steps} {label}"
        assert _report(name, ref[:, prompt.shape[1] :], out.completion_ids) == 0
        assert out.num_model_calls == steps


@pytest.mark.parametrize("gen_length,steps", DREAM_CASES)
def test_dream_origin_equals_reference_with_same_global_seed(dream, gen_length, steps):
    module, model = dream
    cases = [(f"prompt{i}", p) for i, p in enumerate(_prompts(3, seed=4))]
    cases.append(("batch2", _prompts(1, seed=5, batch=2)[0]))
    for seed, (label, prompt) in enumerate(cases):
        torch.manual_seed(1000 + seed)
        ref = _dream_reference(module, prompt, gen_length=gen_length, steps=steps, alg="origin")
        ref_state = torch.get_rng_state()
        torch.manual_seed(1000 + seed)
        out = generate(model, prompt, config=_dream_config(gen_length, steps, "origin"))
        name = f"dream origin L={gen_length} steps={steps} {label}"
        assert _report(name, ref[:, prompt.shape[1] :], out.completion_ids) == 0
        assert torch.equal(torch.get_rng_state(), ref_state)  # the same draws, in the same order
        assert out.num_model_calls == steps


@pytest.mark.parametrize("alg", list(DREAM_RULES))
@pytest.mark.parametrize("gen_length,steps", DREAM_CASES)
def test_dream_alg_temp_equals_reference_with_same_global_seed(dream, alg, gen_length, steps):
    module, model = dream
    for seed, prompt in enumerate(_prompts(2, seed=6)):
        torch.manual_seed(2000 + seed)
        ref = _dream_reference(module, prompt, gen_length=gen_length, steps=steps, alg=alg, alg_temp=0.5)
        ref_state = torch.get_rng_state()
        torch.manual_seed(2000 + seed)
        out = generate(model, prompt, config=_dream_config(gen_length, steps, DREAM_RULES[alg], alg_temp=0.5))
        name = f"dream {alg} alg_temp=0.5 L={gen_length} steps={steps} prompt{seed}"
        assert _report(name, ref[:, prompt.shape[1] :], out.completion_ids) == 0
        assert torch.equal(torch.get_rng_state(), ref_state)


def test_dream_default_differs_from_llada_schedule(dream):
    """The family default matters: LLaDA's even split on a Dream model decodes differently."""
    module, model = dream
    prompt = _prompts(1, seed=7)[0]
    ref = _dream_reference(module, prompt, gen_length=32, steps=10, alg="entropy")
    ours = generate(
        model, prompt, config=SamplerConfig.for_family("dream", gen_length=32, steps=10, after_eos="keep")
    )
    even = generate(
        model,
        prompt,
        config=SamplerConfig(gen_length=32, block_length=32, steps=10, remasking="entropy", after_eos="keep"),
    )
    P = prompt.shape[1]
    assert _report("dream for_family default L=32 steps=10", ref[:, P:], ours.completion_ids) == 0
    assert not torch.equal(even.completion_ids, ref[:, P:])


# --------------------------------------------------------------------------- Fast-dLLM: threshold, caches


@pytest.fixture(scope="module")
def llada_native(checkpoints):
    """dlm-trl's native LLaDA class on the same checkpoint (it has the block cache the reference's
    ``past_key_values`` / ``replace_position`` correspond to), with the same mask-logit hook."""
    from dlm_trl.models.llada import LLaDAModelLM

    module = LLaDAModelLM.from_pretrained(checkpoints["llada"]).eval()
    mask_id, eos_id = int(module.config.mask_token_id), int(module.config.eos_token_id)
    handle = _suppress_mask_logit(module, mask_id)
    yield DLM(module=module, mask_token_id=mask_id, family="llada", eos_token_id=eos_id)
    handle.remove()


SHARPEN = 8.0


def _sharpen(_module, _args, output):
    output.logits.mul_(SHARPEN)
    return output


FAST_CASES = [  # (reference function, our cache, threshold, gen_length, block_length, steps)
    ("generate", "none", 0.9, 32, 8, 16),
    ("generate", "none", 0.5, 24, 8, 12),
    ("generate_with_prefix_cache", "prefix", None, 32, 8, 16),
    ("generate_with_prefix_cache", "prefix", 0.9, 24, 8, 12),
    ("generate_with_dual_cache", "dual", None, 32, 8, 16),
    ("generate_with_dual_cache", "dual", 0.9, 32, 8, 16),
    ("generate_with_dual_cache", "dual", 0.5, 16, 16, 16),
]


@pytest.mark.parametrize("ref_fn,cache,threshold,gen_length,block_length,steps", FAST_CASES)
def test_llada_fast_dllm_decoders_equal_reference(
    llada, llada_native, llada_reference_module, ref_fn, cache, threshold, gen_length, block_length, steps
):
    """Fast-dLLM's threshold decoding and prefix / dual caches (``llada/generate.py``), token for token at T = 0.

    The uncached threshold decoder runs on the reference module itself; the cached ones on dlm-trl's
    native class loaded from the same checkpoint (the reference module's cache is its own format).
    """
    ref_module, ref_dlm = llada
    ours_model = ref_dlm if cache == "none" else llada_native
    committed_many = differs_from_uncached = 0
    # Sharper logits (×SHARPEN on both modules) so that confidences cross the thresholds: a random
    # model's are too flat to ever commit two tokens in one step.
    hooks = [m.register_forward_hook(_sharpen) for m in (ref_module, llada_native.module)]
    for i, prompt in enumerate(_prompts(3, seed=11)):
        ref, _ = getattr(llada_reference_module, ref_fn)(
            ref_module,
            prompt,
            steps=steps,
            gen_length=gen_length,
            block_length=block_length,
            temperature=0.0,
            remasking="low_confidence",
            mask_id=ref_dlm.mask_token_id,
            threshold=threshold,
        )
        cfg = SamplerConfig(
            gen_length=gen_length,
            block_length=block_length,
            steps=steps,
            after_eos="keep",
            cache=cache,
            transfer="topk" if threshold is None else "threshold",
            threshold=0.9 if threshold is None else threshold,
        )
        out = generate(ours_model, prompt, config=cfg)
        P = prompt.shape[1]
        name = f"llada {ref_fn} threshold={threshold} L={gen_length} K={block_length} prompt{i}"
        assert _report(name, ref[:, P:], out.completion_ids) == 0
        if threshold is not None:
            committed_many += int(out.num_model_calls < gen_length)
        if cache != "none":  # the cache is an approximation: the test can tell it from the uncached decoder
            plain = generate(ours_model, prompt, config=dataclasses.replace(cfg, cache="none"))
            differs_from_uncached += int(not torch.equal(plain.completion_ids, out.completion_ids))
    for h in hooks:
        h.remove()
    if threshold is not None:
        assert committed_many > 0  # the case exercised steps that commit several tokens
    print(f"\n[golden] {ref_fn}: {differs_from_uncached}/3 prompts decode differently without the cache", end="")
    if cache != "none":
        assert differs_from_uncached > 0
