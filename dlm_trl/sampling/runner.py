"""Model calls of the sampler and the key/value cache policy (``none``, ``prefix``, ``dual``).

A :class:`BlockRunner` answers one question per step: the logits of the current block's ``K``
positions for a set of rows. How it gets them is the cache policy:

* ``"none"`` — a forward over the whole sequence. Models with ``logits_to_keep`` (dlm-trl's
  native LLaDA / Dream and the embedded model) project only the block's positions to the
  vocabulary, so no ``[B, T, V]`` tensor is made.
* ``"prefix"`` (Fast-dLLM's prefix cache) — a full forward at the block's first step (and every
  ``cache_refresh`` steps) keeps every layer's keys/values; the other steps compute only the
  positions from the block's start to the end of the sequence, attending to the cached keys and
  values of the prefix (prompt and finished blocks).
* ``"dual"`` (Fast-dLLM's dual cache) — as ``prefix``, but the other steps compute only the
  block's ``K`` positions; the keys/values of the later (still masked) blocks are also reused
  from the last full forward.

The cache contract of the models is in :mod:`dlm_trl.models._layers` (``return_kv_cache``,
``kv_cache`` + ``cache_span``). Dream's logit at position ``i`` predicts token ``i + 1``, so for
Dream the runner computes (and keeps the logits of) raw positions ``lo − 1 .. hi − 2``. Caches are
exact when refreshed every step (``cache_refresh=1`` is the uncached sampler); otherwise the
reused keys/values are those of the last full forward, an approximation whose accuracy cost the
benchmark ``benchmarks/rollout_speed.py`` measures.

Rows: the caller passes the indices of the rows still decoding (threshold rules finish rows at
different steps); the cache follows the shrinking set by indexing its rows.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import SamplerConfig
from .guidance import guide


def _logits_of(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def block_cache_module(model: Any) -> Any | None:
    """The module under a :class:`~dlm_trl.models.DLM` when it implements the block cache (else ``None``)."""
    module = getattr(model, "module", None)
    if module is None or getattr(model, "mask_mode", "2d") != "2d":
        return None
    # one flag for the whole contract of dlm_trl.models._layers: block cache and logits_to_keep
    return module if getattr(model, "keeps_selected_logits", False) else None


class BlockRunner:
    """Logits of the current block for a set of rows, under ``config.cache`` (module docstring)."""

    def __init__(
        self,
        model: Any,
        config: SamplerConfig,
        *,
        prompt_width: int,
        attention_mask: torch.Tensor | None,  # [B, T] or None
        uncond_prompt: torch.Tensor | None,  # [B, P] CFG's unconditional prompt, or None
    ):
        self.model, self.config = model, config
        self.P = prompt_width
        self.attn = attention_mask
        self.uncond_prompt = uncond_prompt
        self.module = block_cache_module(model)
        self.shift = 1 if getattr(model, "family", "llada") == "dream" else 0
        if config.cache != "none" and self.module is None:
            raise ValueError(
                f"cache={config.cache!r} needs a model with a block key/value cache: dlm-trl's native LLaDA or Dream "
                "classes or the embedded model, wrapped as dlm_trl.models.DLM (remote code and other models have "
                "none); use cache='none'"
            )
        self.cache = None
        self.cache_rows: torch.Tensor | None = None  # [R] global row indices the cache holds

    # ------------------------------------------------------------------ forwards

    def _raw_positions(self, lo: int, hi: int, device) -> torch.Tensor:
        """Raw model positions whose logits are the block's aligned logits, ``[K]``."""
        return (torch.arange(lo, hi, device=device) - self.shift).clamp_min(0)

    def _call(self, input_ids: torch.Tensor, attn: torch.Tensor | None, **kwargs: Any) -> Any:
        return self.module(input_ids=input_ids, attention_mask=attn, **kwargs)

    def _attn(self, rows: torch.Tensor | None) -> torch.Tensor | None:
        if self.attn is None:
            return None
        return self.attn if rows is None else self.attn[rows]

    def full(
        self,
        x: torch.Tensor,
        rows: torch.Tensor | None,
        lo: int,
        hi: int,
        keep_cache: bool,
        scales: torch.Tensor | None = None,  # [R] guidance scales (CFG), None = cfg_scale at every row
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A forward over the whole sequence of ``rows``: the block's logits ``[R, K, V]`` and, with
        classifier-free guidance and ``guidance_rate_preserving``, the conditional ones (``(guided, conditional)``;
        ``(logits, None)`` otherwise)."""
        xs = x if rows is None else x[rows]  # [R, T]
        attn = self._attn(rows)
        if self.config.cfg_scale > 0:
            unc = self.uncond_prompt if rows is None else self.uncond_prompt[rows]
            x_unc = torch.cat([unc, xs[:, self.P :]], dim=1)  # [R, T]
            both_attn = None if attn is None else torch.cat([attn, attn], dim=0)
            both = self._block_logits(torch.cat([xs, x_unc], dim=0), both_attn, lo, hi)  # [2R, K, V]
            R = xs.shape[0]
            cond, unc_l = both[:R].double(), both[R:].double()
            if scales is None:
                scales = torch.full((R,), float(self.config.cfg_scale), dtype=torch.float64, device=cond.device)
            guided = guide(cond, unc_l, scales.to(cond.device))
            # Only rate-preserving guidance needs the conditional logits after this call (a [R, K, V] float64).
            return guided, (cond if self.config.guidance_rate_preserving else None)
        logits = self._block_logits(xs, attn, lo, hi, keep_cache=keep_cache)
        if keep_cache:
            self.cache_rows = None if rows is None else rows.clone()
        return logits, None

    def _block_logits(
        self, xs: torch.Tensor, attn: torch.Tensor | None, lo: int, hi: int, keep_cache: bool = False
    ) -> torch.Tensor:
        """One full forward of ``xs``; the logits of positions ``lo..hi-1`` (kept in ``self.cache`` on request)."""
        if self.module is None:
            return _logits_of(self.model(xs, attention_mask=attn))[:, lo:hi]
        out = self._call(
            xs, attn, logits_to_keep=self._raw_positions(lo, hi, xs.device), return_kv_cache=keep_cache
        )
        if keep_cache:
            self.cache = out.kv_cache
        return out.logits

    def _cache_for(self, rows: torch.Tensor | None):
        """The cache restricted to ``rows`` (the active set only shrinks inside a block)."""
        if rows is None or self.cache_rows is None or torch.equal(rows, self.cache_rows):
            return self.cache
        pos = torch.searchsorted(self.cache_rows, rows)
        self.cache.keys[:] = [k.index_select(0, pos) for k in self.cache.keys]
        self.cache.values[:] = [v.index_select(0, pos) for v in self.cache.values]
        self.cache_rows = rows.clone()
        return self.cache

    def cached(self, x: torch.Tensor, rows: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor:
        """A forward of the block (``dual``) or of block + suffix (``prefix``) against the cache, ``[R, K, V]``."""
        xs = x if rows is None else x[rows]  # [R, T]
        T = xs.shape[1]
        raw = self._raw_positions(lo, hi, xs.device)  # [K]
        span_lo = int(raw[0])
        span_hi = hi if self.config.cache == "dual" else T
        out = self._call(
            xs[:, span_lo:span_hi],
            self._attn(rows),
            kv_cache=self._cache_for(rows),
            cache_span=(span_lo, span_hi),
            update_cache=True,
            logits_to_keep=raw - span_lo,
        )
        return out.logits

    def block_logits(
        self,
        x: torch.Tensor,
        rows: torch.Tensor | None,
        lo: int,
        hi: int,
        step_in_block: int,
        scales: torch.Tensor | None = None,  # [R] guidance scales of the rows (CFG only)
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``[R, K, V]`` of positions ``lo..hi-1`` for ``rows`` (``None`` = all) at this step, and the
        conditional logits under rate-preserving guidance (``None`` otherwise; see :meth:`full`)."""
        cfg = self.config
        if cfg.cache == "none":
            return self.full(x, rows, lo, hi, keep_cache=False, scales=scales)
        refresh = step_in_block == 0 or (cfg.cache_refresh is not None and step_in_block % cfg.cache_refresh == 0)
        if refresh or self.cache is None:
            return self.full(x, rows, lo, hi, keep_cache=True, scales=scales)
        return self.cached(x, rows, lo, hi), None

    def idle_forward(self, x: torch.Tensor) -> None:
        """One forward on one row whose result is thrown away: keeps this rank's forward count equal to the
        others' under ZeRO-3 when all its rows have finished the block."""
        xs = x[:1]
        attn = self._attn(torch.zeros(1, dtype=torch.long, device=x.device))
        if self.module is None:
            self.model(xs, attention_mask=attn)
        else:
            self._call(xs, attn, logits_to_keep=1)


__all__ = ["BlockRunner", "block_cache_module"]
