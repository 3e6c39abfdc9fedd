"""zen_code_jax.infer."""
