"""`llmkit pretrain`: config.py (its options), stage.py (`pretrain(tokens, out, config)`),
command.py. The training itself (loop, layouts, checkpoints) is the library in llmkit/train/,
shared with finetune."""
