"""zen_code_jax.lsp: a language server that completes code with a trained model.

`python -m zen_code_jax.lsp` (see `__main__`); inline completions with repository context
laid out as training windows. Sits above `infer` and `data` (beside `eval`).
"""
