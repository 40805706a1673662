"""dlm-trl: reinforcement-learning fine-tuning of masked diffusion language models on TRL."""

__version__ = "0.1.0"
