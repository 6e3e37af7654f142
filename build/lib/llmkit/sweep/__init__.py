"""`llmkit sweep`: a grid of pretraining runs over model sizes and token budgets (config.py, grid.py:
the grid and its rules; stage.py: running it, each run an `llmkit pretrain` subprocess; command.py)."""
