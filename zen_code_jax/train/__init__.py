"""zen_code_jax.train."""
