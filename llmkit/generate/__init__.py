"""Generation: the shared inference engine and the `llmkit generate` stage.

Public surface, also used by `llmkit eval` and `llmkit chat` (kept small on purpose):

    from llmkit.generate.engine import Generator, GenerationParams, generate_ids
    from llmkit.generate.prompts import chat_stop_ids, document_start_id, encode_prompt

config.py (the options of generate and chat), engine.py (batched left-padded KV-cached
decoding), sampling.py (temperature, top-k, top-p, repetition penalty), prompts.py (prompt files,
framing a prompt for a checkpoint; chats render through llmkit.data.templates), stage.py
(`run_generate`), command.py and chat.py (the commands). See docs/generate.md.
"""
