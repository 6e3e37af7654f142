"""Generation: the shared inference engine and the `llmkit generate` stage.

Public surface, also used by `llmkit eval` and `llmkit chat` (kept small on purpose):

    from llmkit.generate.engine import Generator, GenerationParams, generate_ids
    from llmkit.generate.prompts import encode_chat, chat_stop_ids, document_start_id

engine.py (batched left-padded KV-cached decoding), sampling.py (temperature, top-k, top-p,
repetition penalty), prompts.py (prompt files, templates, chat rendering), stage.py
(`run_generate`), command.py (the CLI). See docs/generate.md.
"""
