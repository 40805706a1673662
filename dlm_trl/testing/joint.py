"""A masked-diffusion "model" whose predictions are the exact conditionals of a known joint.

Used as an oracle in tests: with a denoiser that predicts every masked position from the
*exact* conditional ``p(y_i | visible positions)`` of a joint distribution ``p`` over all
``V^L`` completions, every likelihood bound of a masked diffusion model is tight — the
continuous-time ELBO is an average over unmasking orders of exact chain-rule factorisations,
each equal to ``log p(y)`` — so the ELBO, an upper bound and the left-to-right likelihood must
all equal :meth:`JointTableDLM.log_prob` exactly.

.. code-block:: python

    model = JointTableDLM(vocab_size=3, length=4, prompt_length=2, seed=0)
    y = model.sample(5, generator=torch.Generator().manual_seed(1))         # [5, 4]
    model.log_prob(y)                                                       # [5] exact log p(y)
    logits = model(ids)   # ids [N, 2 + 4] with model.mask_token_id at masked positions

The prompt is ignored (``p`` does not depend on it). Logits have ``vocab_size + 1`` entries;
the mask token's is ``-inf``. ``log_joint`` is a parameter, so gradients flow to it.
"""

from __future__ import annotations

import itertools

import torch


class JointTableDLM(torch.nn.Module):
    """Exact conditionals of ``p(y) ∝ exp(log_joint[y])`` over ``y ∈ {0..V-1}^L``.

    Args:
        vocab_size: V (tokens ``0..V-1``; the mask token is ``V``).
        length: L, the completion length; ``V**L`` must stay small (≤ 65,536).
        prompt_length: P, the number of leading prompt positions (their logits are 0).
        seed: draws ``log_joint`` from ``scale · N(0, 1)``.
        scale: spread of the joint's log-weights (larger = more peaked).
    """

    def __init__(self, vocab_size: int, length: int, prompt_length: int = 0, *, seed: int = 0, scale: float = 1.5):
        super().__init__()
        if vocab_size < 2 or length < 1 or prompt_length < 0:
            raise ValueError(f"need vocab_size ≥ 2, length ≥ 1, prompt_length ≥ 0; got {vocab_size}, {length}, {prompt_length}")
        if vocab_size**length > 65_536:
            raise ValueError(f"V^L = {vocab_size}^{length} is too many sequences to enumerate (limit 65,536)")
        self.vocab_size = int(vocab_size)
        self.length = int(length)
        self.prompt_length = int(prompt_length)
        self.mask_token_id = self.vocab_size
        seqs = torch.tensor(list(itertools.product(range(vocab_size), repeat=length)), dtype=torch.long)  # [S, L]
        self.register_buffer("seqs", seqs, persistent=False)
        g = torch.Generator().manual_seed(int(seed))
        self.log_joint = torch.nn.Parameter(scale * torch.randn(seqs.shape[0], generator=g, dtype=torch.float64))

    def log_probs_table(self) -> torch.Tensor:
        """``[S]`` normalised log p over :attr:`seqs`."""
        return torch.log_softmax(self.log_joint, dim=0)

    def index(self, y: torch.Tensor) -> torch.Tensor:
        """Row index into :attr:`seqs` of each completion ``y [B, L]``."""
        if y.dim() != 2 or y.shape[1] != self.length:
            raise ValueError(f"y must be [B, {self.length}], got {tuple(y.shape)}")
        if bool((y < 0).any() | (y >= self.vocab_size).any()):
            raise ValueError(f"tokens must be in 0..{self.vocab_size - 1}")
        powers = self.vocab_size ** torch.arange(self.length - 1, -1, -1, device=y.device)
        return (y * powers).sum(1)

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """``[B]`` exact ``log p(y)`` (float64)."""
        return self.log_probs_table()[self.index(y)]

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[n, L]`` exact samples of ``p``."""
        probs = self.log_probs_table().detach().exp()
        return self.seqs[torch.multinomial(probs, n, replacement=True, generator=generator)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, P+L]`` ids → ``[N, P+L, V+1]`` float32 logits: at completion position i the exact
        ``log p(y_i = v | the visible completion positions)`` (for visible positions too)."""
        N, T = input_ids.shape
        P, L, V = self.prompt_length, self.length, self.vocab_size
        if T != P + L:
            raise ValueError(f"input_ids must have {P} + {L} = {P + L} positions, got {T}")
        comp = input_ids[:, P:]  # [N, L]
        visible = comp != self.mask_token_id  # [N, L]
        agree = (self.seqs[None, :, :] == comp[:, None, :]) | ~visible[:, None, :]  # [N, S, L]
        logw = torch.where(agree.all(-1), self.log_joint[None, :], torch.full((), float("-inf"), dtype=torch.float64))
        # log Σ_{s compatible, s_i = v} w_s for every position i and value v
        onehot = self.seqs[None, :, :, None] == torch.arange(V)[None, None, None, :]  # [1, S, L, V]
        terms = torch.where(onehot, logw[:, :, None, None], torch.full((), float("-inf"), dtype=torch.float64))
        num = torch.logsumexp(terms, dim=1)  # [N, L, V]
        cond = num - torch.logsumexp(logw, dim=1)[:, None, None]  # [N, L, V]
        logits = torch.zeros(N, T, V + 1, dtype=torch.float64)
        logits[:, P:, :V] = cond
        logits[:, P:, V] = float("-inf")
        return logits.float()


__all__ = ["JointTableDLM"]
