"""zen_code_jax.parallel."""
