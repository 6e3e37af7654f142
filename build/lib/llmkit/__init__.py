"""llmkit: from raw text to a trained, evaluated language model, one command per stage."""

__version__ = "0.1.0"
