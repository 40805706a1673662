"""One contract, checked against every installed likelihood estimator.

Parametrised over ``dlm_trl.registry.available("dlm_trl.estimators")`` — the first-party
plugins and anything else installed — plus a third-party estimator ``foo_est`` that this
file makes visible through an entry point of a temporary distribution
(``foo_est-0.1.dist-info`` on ``sys.path``; nothing is pip-installed).

What every estimator must do (see ``dlm_trl/estimators.py``): ``[B, L]`` float32 output
with zeros where ``completion_mask == 0``; randomness only from ``generator`` (same
generators → same output, row b depends only on generator b); gradients when grad is
enabled and none under ``no_grad``; ``nfe(L)`` equal to the rows actually forwarded per
sequence; Monte Carlo draws folded into the batch and chunked by ``batch_size`` without
changing the result.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest
import torch

from dlm_trl.estimators import LikelihoodEstimator, row_generators
from dlm_trl.models import DLM, TinyDLMConfig, TinyDLMForMaskedDiffusion
from dlm_trl.registry import ESTIMATORS, PluginNotFoundError, available, load_estimator

FIRST_PARTY = (
    "ar_order_exact", "double_mc_elbo", "eubo", "exact_elbo", "one_step_unmasking", "sdmc_elbo", "spg_elbo",
    "stratified_elbo",
)
THIRD_PARTY = "foo_est"
# Settings that make the first-party estimators fold several draws per row into the batch.
OVERRIDES = {
    "ar_order_exact": {"score_fraction": 0.6, "select": "random"},  # the stochastic subset (3 of 5 rows)
    "double_mc_elbo": {"num_samples": 3},
    "stratified_elbo": {"num_samples": 3},
    "sdmc_elbo": {"num_nodes": 3, "masks_per_node": 2},
    "eubo": {"num_samples": 3, "block_length": 2},
    "spg_elbo": {"num_samples": 3, "block_length": 2},
}
NAMES = sorted(set(available(ESTIMATORS))) + [THIRD_PARTY]

FOO_MODULE = '''
"""A third-party estimator: one Bernoulli(1/2) mask over the completion, weight 2."""
import torch

from dlm_trl.masking import apply_mask, bernoulli_mask, token_log_probs


class FooEstimator:
    name = "foo_est"

    def __init__(self, *, batch_size=None):
        self.batch_size = batch_size

    def nfe(self, completion_length):
        return 1

    def __call__(self, model, prompt_ids, completion_ids, completion_mask, *, generator=None,
                 prompt_attention_mask=None):
        B, P = prompt_ids.shape
        noise = bernoulli_mask(torch.full((B,), 0.5), torch.ones_like(completion_ids, dtype=torch.bool),
                               generator=generator)
        ids = torch.cat([prompt_ids, apply_mask(completion_ids, noise, model.mask_token_id)], 1)
        attn = None
        if prompt_attention_mask is not None:
            attn = torch.cat([prompt_attention_mask, torch.ones_like(completion_ids)], 1)
        step = self.batch_size or max(B, 1)
        out = []
        for s in range(0, B, step):
            kw = {} if attn is None else {"attention_mask": attn[s:s + step]}
            logits = model(ids[s:s + step], **kw)
            out.append(token_log_probs(logits[:, P:], completion_ids[s:s + step]))
        lp = torch.cat(out)
        return torch.where(noise & completion_mask.bool(), 2.0 * lp, torch.zeros_like(lp))
'''


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny forwards: one intra-op thread is much faster on a shared CPU than several."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def third_party(tmp_path_factory):
    """Put a distribution ``foo-est`` with a ``dlm_trl.estimators`` entry point on sys.path."""
    root = tmp_path_factory.mktemp("site")
    (root / "foo_est.py").write_text(FOO_MODULE)
    info = root / "foo_est-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: foo-est\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dlm_trl.estimators]\nfoo_est = foo_est:FooEstimator\n")
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    yield THIRD_PARTY
    sys.path.remove(str(root))
    sys.modules.pop("foo_est", None)
    importlib.invalidate_caches()


def _model(seed: int = 0) -> DLM:
    torch.manual_seed(seed)
    cfg = TinyDLMConfig(
        vocab_size=24, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, initializer_range=0.3, mask_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    return DLM.wrap(TinyDLMForMaskedDiffusion(cfg).eval())


@pytest.fixture(scope="module")
def model():
    return _model(0)


@pytest.fixture(scope="module")
def batch():
    """3 rows: prompt width 5 (row 1 left-padded by 2), completion L = 5 (rows 1, 2 EOS-padded)."""
    g = torch.Generator().manual_seed(123)
    prompt = torch.randint(4, 24, (3, 5), generator=g)
    pam = torch.ones(3, 5, dtype=torch.long)
    prompt[1, :2], pam[1, :2] = 2, 0
    comp = torch.randint(4, 24, (3, 5), generator=g)
    cmask = torch.ones(3, 5, dtype=torch.long)
    comp[1, 3:], cmask[1, 4:] = 2, 0  # EOS at 3 counts, the padding EOS at 4 does not
    comp[2, 2:], cmask[2, 3:] = 2, 0
    return prompt, comp, cmask, pam


def _make(name: str, **kwargs):
    return load_estimator(name, **{**OVERRIDES.get(name, {}), **kwargs})


def _stochastic(est) -> bool:
    return not getattr(est, "deterministic", False)


def _run(est, model, batch, seeds=(0, 1, 2), **kw):
    prompt, comp, cmask, pam = batch
    gens = row_generators(seeds) if seeds is not None else None
    return est(model, prompt, comp, cmask, generator=gens, prompt_attention_mask=pam, **kw)


class RowCounter:
    """Counts forward calls and rows through a pre-hook on the model's module."""

    def __init__(self, model: DLM):
        self.calls: list[int] = []
        self.inputs: list[torch.Tensor] = []
        self.handle = model.module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        self.calls.append(ids.shape[0])
        self.inputs.append(ids.detach().clone())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(params=NAMES)
def name(request, third_party):
    return request.param


# ----------------------------------------------------------------------------- registry


def test_first_party_estimators_are_registered():
    missing = set(FIRST_PARTY) - set(available(ESTIMATORS))
    assert not missing, (
        f"entry points missing for {sorted(missing)}: they are declared in pyproject.toml but only "
        "visible after reinstalling the package (pip install -e .)"
    )


def test_third_party_entry_point_is_visible(third_party):
    assert third_party in available(ESTIMATORS)
    est = load_estimator(third_party, batch_size=2)
    assert est.name == third_party and est.batch_size == 2


def test_misnamed_estimator_suggests_the_close_name():
    with pytest.raises(PluginNotFoundError) as err:
        load_estimator("sdmc_elbbo")
    msg = str(err.value)
    assert "'sdmc_elbo'" in msg and "Did you mean" in msg and "exact_elbo" in msg


def test_plugins_import_only_masking_and_the_protocol():
    """ARCHITECTURE.md: estimator plugins import only the masking helpers and the Protocol."""
    allowed = {"dlm_trl.masking", "dlm_trl.estimators"}
    root = Path(importlib.import_module("dlm_trl_estimators").__file__).parent
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module or ""]
            for mod in mods:
                if mod.split(".")[0] in {"dlm_trl", "trl", "transformers"}:
                    assert mod in allowed, f"{path.name} imports {mod}"


# ----------------------------------------------------------------------------- contract


def test_implements_the_protocol(name):
    est = _make(name)
    assert isinstance(est, LikelihoodEstimator)
    assert est.name == name
    assert isinstance(est.nfe(5), int) and est.nfe(5) >= 1


def test_shape_dtype_and_zeros_on_padding(name, model, batch):
    est = _make(name)
    with torch.no_grad():
        out = _run(est, model, batch)
    comp, cmask = batch[1], batch[2]
    assert out.shape == comp.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert (out[cmask == 0] == 0).all()
    assert (out[cmask == 1] != 0).any()


def test_same_generators_same_output_different_generators_different(name, model, batch):
    est = _make(name)
    with torch.no_grad():
        a = _run(est, model, batch, seeds=(0, 1, 2))
        b = _run(est, model, batch, seeds=(0, 1, 2))
        # several other seeds: an estimator with little randomness (d1's prompt mask) may repeat once
        others = [_run(est, model, batch, seeds=(10 * k, 10 * k + 1, 10 * k + 2)) for k in range(1, 9)]
    assert torch.equal(a, b)
    if _stochastic(est):
        for r in range(3):
            assert any(not torch.equal(a[r], c[r]) for c in others), f"row {r} ignores its generator"
    else:
        assert all(torch.equal(a, c) for c in others)


def test_row_depends_only_on_its_own_generator(name, model, batch):
    est = _make(name)
    prompt, comp, cmask, pam = batch
    with torch.no_grad():
        full = _run(est, model, batch, seeds=(0, 1, 2))
        changed = _run(est, model, batch, seeds=(0, 1, 99))
        alone = est(model, prompt[1:2], comp[1:2], cmask[1:2], generator=row_generators([1]),
                    prompt_attention_mask=pam[1:2])
    assert torch.allclose(full[:2], changed[:2], atol=1e-5)
    assert torch.allclose(full[1:2], alone, atol=1e-4), "row 1 changes with the rest of the batch"


def test_accepts_one_generator_or_none(name, model, batch):
    est = _make(name)
    prompt, comp, cmask, pam = batch
    with torch.no_grad():
        one = est(model, prompt, comp, cmask, generator=torch.Generator().manual_seed(0), prompt_attention_mask=pam)
        again = est(model, prompt, comp, cmask, generator=torch.Generator().manual_seed(0), prompt_attention_mask=pam)
        glob = est(model, prompt, comp, cmask)
    assert torch.equal(one, again)
    assert one.shape == glob.shape == comp.shape


def test_wrong_number_of_generators_is_an_error(name, model, batch):
    if name == THIRD_PARTY:
        pytest.skip("argument checking is the plugin's own business")
    prompt, comp, cmask, pam = batch
    with pytest.raises(ValueError, match="one per row"):
        _make(name)(model, prompt, comp, cmask, generator=row_generators([0, 1]), prompt_attention_mask=pam)


def test_masks_do_not_depend_on_the_model(name, batch):
    """Common random numbers: the same generators give the same noisy inputs to any model."""
    est = _make(name)
    inputs = []
    for seed in (0, 1):
        m = _model(seed)
        with RowCounter(m) as rc, torch.no_grad():
            _run(est, m, batch, seeds=(5, 6, 7))
        inputs.append(torch.cat(rc.inputs))
    assert torch.equal(inputs[0], inputs[1])


def test_gradients_flow_only_when_enabled(name, model, batch):
    est = _make(name)
    model.module.zero_grad(set_to_none=True)
    out = _run(est, model, batch)
    assert out.requires_grad
    (out * batch[2]).sum().backward()
    grads = [p.grad for p in model.module.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    model.module.zero_grad(set_to_none=True)
    with torch.no_grad():
        assert not _run(est, model, batch).requires_grad


def test_nfe_equals_forward_passes_run(name, model, batch):
    est = _make(name)
    B, L = batch[1].shape
    with RowCounter(model) as rc, torch.no_grad():
        _run(est, model, batch)
    assert sum(rc.calls) == B * est.nfe(L), f"{sum(rc.calls)} rows forwarded for B={B}, nfe({L})={est.nfe(L)}"


def test_draws_folded_into_batch_and_chunking_is_invisible(name, model, batch):
    B, L = batch[1].shape
    whole = _make(name, batch_size=None)
    with RowCounter(model) as rc, torch.no_grad():
        ref = _run(whole, model, batch)
    assert rc.calls == [B * whole.nfe(L)], f"expected one forward of all rows, got {rc.calls}"
    chunked = _make(name, batch_size=2)
    with RowCounter(model) as rc, torch.no_grad():
        out = _run(chunked, model, batch)
    assert max(rc.calls) <= 2 and sum(rc.calls) == B * chunked.nfe(L)
    assert torch.allclose(out, ref, atol=1e-5)
