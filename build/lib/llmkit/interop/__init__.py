"""`llmkit export` and `llmkit import`: checkpoints to and from Hugging Face transformers folders.

export.py and importer.py (the stages), hf_files.py (a transformers folder's files: config.json,
safetensors weights, never pickle; llmkit's provenance file), hf_tokenizer.py (tokenizers both
ways, chat templates), command.py. The config and weight mappings, which `llmkit plan` and the
benchmarks use too, are llmkit/model/hf_config.py and hf_weights.py. See docs/interop.md.
"""
