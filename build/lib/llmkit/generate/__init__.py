"""`llmkit generate` and `llmkit chat`: the stages over the shared inference library
(llmkit/inference/: the batched KV-cached engine, sampling, prompts, the compiled decode step).

config.py (the options of generate and chat), stage.py (`run_generate`), command.py and chat.py
(the commands). See docs/generate.md.
"""
