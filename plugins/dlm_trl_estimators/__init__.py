"""First-party likelihood estimators for dlm-trl (entry-point group ``dlm_trl.estimators``).

One paper, one file: ``one_step_unmasking`` (d1), ``double_mc_elbo``, ``sdmc_elbo`` (GDPO),
``stratified_elbo`` (LLaDA / VRPO; ESPO's coupled draws with ``antithetic``), ``ar_order_exact``
(JustGRPO's exact left-to-right likelihood), ``eubo`` and ``spg_elbo`` (SPG's upper and lower
bounds on shared block-wise masks) and ``exact_elbo`` (test oracle); ``_common`` holds the
shared noisy-batch building (and ``constant_memory``'s checkpointed chunks). Load them by name with ``dlm_trl.registry.load_estimator``;
nothing is imported here, so loading one estimator imports only its own module.
"""
