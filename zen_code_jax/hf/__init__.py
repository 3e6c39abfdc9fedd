"""Hugging Face Qwen2 / Qwen2.5-Coder checkpoints in and out (docs/hf.md).

`checkpoint.py` reads and validates an HF directory, `load.py` streams its tensors into
sharded parameters, `export.py` writes sharded safetensors back, `transfer.py` turns an HF
directory into a run directory (and back), `__main__.py` is the `import` / `export` CLI.
An infra module: it imports model, parallel, config and data only.
"""
