"""reasonloop: teach language models to reason with RL and self-improvement."""

__version__ = "0.1.0"
