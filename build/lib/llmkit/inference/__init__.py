"""Inference shared by the stages that run a model on text (generate, chat, eval):

    from llmkit.inference.engine import Generator, GenerationParams, generate_ids
    from llmkit.inference.prompts import chat_stop_ids, document_start_id, encode_prompt

engine.py (batched, left-padded, KV-cached decoding), sampling.py (temperature, top-k, top-p,
repetition penalty), prompts.py (prompt files; framing a prompt for a checkpoint, chats rendered
through llmkit.data.templates), compiled.py (the decode step under `torch.compile`).
"""
