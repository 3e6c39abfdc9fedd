"""zen_code_jax.eval."""
