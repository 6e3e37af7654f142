"""The special tokens every llmkit vocabulary starts with (ids 0, 1, ... in this order)."""

DEFAULT_SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|mask|>", "<|system|>", "<|user|>", "<|assistant|>")
REQUIRED_SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>")  # the stages rely on these
