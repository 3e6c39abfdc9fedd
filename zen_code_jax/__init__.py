"""zen-code-jax: JAX codebase for training, ablating, evaluating and serving code LMs."""

__version__ = "0.1.0"
