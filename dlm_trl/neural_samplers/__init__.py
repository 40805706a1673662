"""Neural samplers for unnormalised discrete targets: MDNS (arXiv 2508.10684) and PDNS (arXiv 2510.03824)
on Ising / Potts models (ALGORITHMS.md §4). See :mod:`.mdns` for the math and :mod:`.ising` for the
targets, their exact statistics and the Wolff Monte Carlo reference."""

from .ising import (
    BETA_C,
    SpinStats,
    exact_ising,
    exact_log_probs,
    exact_potts,
    ising_energy,
    potts_energy,
    reference_statistics,
    spin_statistics,
    tokens_to_spins,
    wolff_ising,
)
from .mdns import (
    SpinTarget,
    TrainConfig,
    Trajectories,
    evaluate,
    exact_model_log_probs,
    importance_weights,
    log_weights,
    log_z_estimate,
    make_model,
    sample,
    train,
    trajectory_log_prob,
)

__all__ = [
    "BETA_C",
    "SpinStats",
    "SpinTarget",
    "TrainConfig",
    "Trajectories",
    "evaluate",
    "exact_ising",
    "exact_log_probs",
    "exact_model_log_probs",
    "exact_potts",
    "importance_weights",
    "ising_energy",
    "log_weights",
    "log_z_estimate",
    "make_model",
    "potts_energy",
    "reference_statistics",
    "sample",
    "spin_statistics",
    "tokens_to_spins",
    "train",
    "trajectory_log_prob",
    "wolff_ising",
]
