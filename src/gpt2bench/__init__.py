"""gpt2bench: honest, reproducible benchmarks of GPT-2 inference backends."""

__version__ = "0.1.0"

# The model's context window; every length check uses this one number.
MAX_CONTEXT = 1024
