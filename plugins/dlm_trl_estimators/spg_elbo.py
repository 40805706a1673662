"""SPG's ELBO: the masked-diffusion ELBO on SPG's block-wise masks (Wang et al., arXiv 2510.09541).

The lower half of SPG's sandwich. It draws exactly the masks of the ``eubo`` estimator with the same
options and generators (:class:`~dlm_trl_estimators.eubo.EUBO`, whose module doc gives the math, the
``masking`` / ``scoring`` / ``length`` options and where the paper's reference code differs) and
returns the per-token ELBO contributions

    contrib_i = (1/K) Σ_k w_k · 1[i scored in draw k] · log f_θ(y_i | z_k, q),

``w_k = J · n_j / l`` for block-wise masking (``scoring="block"``, default: unbiased for the
semi-autoregressive block ELBO, which equals ``log p(y)`` on a consistent model), ``n / l`` for
``masking="random"`` (the count-form ELBO, = ``exact_elbo``), ``n / m`` with ``scoring="masked"`` (the
reference code). ``beta`` and ``normalize`` are accepted (so one set of options configures both
halves) and do not change the ELBO. ``EUBO.bounds`` computes this and the EUBO from one forward pass.

NFE: K (``num_samples``, default 2).
"""

from __future__ import annotations

from .eubo import EUBO


class SPGELBO(EUBO):
    """``spg_elbo``: the ELBO on SPG's masks (same options and masks as ``eubo``)."""

    name = "spg_elbo"
    bound = "elbo"
