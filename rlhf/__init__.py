"""The learning side of rlhf-studio: config, model loading, rollout, reward scorers, PPO, evaluation, CLI.

Nothing heavy is imported here; models load in explicit `load_*` calls.
"""
