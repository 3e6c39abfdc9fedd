"""zen_code_jax.data."""
