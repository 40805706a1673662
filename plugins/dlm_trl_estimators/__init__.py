"""First-party likelihood estimators for dlm-trl (entry-point group ``dlm_trl.estimators``).

One paper, one file: ``one_step_unmasking`` (d1), ``double_mc_elbo``, ``sdmc_elbo`` (GDPO),
``stratified_elbo`` (LLaDA / VRPO) and ``exact_elbo`` (test oracle); ``_common`` holds the
shared noisy-batch building. Load them by name with ``dlm_trl.registry.load_estimator``;
nothing is imported here, so loading one estimator imports only its own module.
"""
