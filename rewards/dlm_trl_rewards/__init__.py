"""First-party reward functions of dlm-trl (import name ``dlm_trl_rewards``).

Registered in the ``dlm_trl.rewards`` entry-point group (see ``pyproject.toml``):

=======================  ================================================  ==============================
name                     function                                          dataset columns
=======================  ================================================  ==============================
math_accuracy            ``dlm_trl_rewards.math:math_accuracy``            ``answer``
gsm8k_accuracy           ``dlm_trl_rewards.math:gsm8k_accuracy``           ``answer``
code_unit_tests          ``dlm_trl_rewards.code:code_unit_tests``          ``test``, ``entry_point`` or
                                                                           ``test_list`` (MBPP)
code_unit_tests_partial  ``dlm_trl_rewards.code:code_unit_tests_partial``  the same; fraction of asserts
countdown                ``dlm_trl_rewards.countdown:countdown_reward``    ``numbers``, ``target``
sudoku                   ``dlm_trl_rewards.sudoku:sudoku_reward``          ``puzzle``, ``solution``
format                   ``dlm_trl_rewards.format:format_reward``          (none)
=======================  ================================================  ==============================

Every reward has TRL's signature ``f(prompts, completions, **columns) -> list[float | None]``,
accepts string or chat-message completions, and imports nothing from ``dlm_trl`` or ``trl``.
Nothing is imported here, so loading one reward does not import the others.
"""
