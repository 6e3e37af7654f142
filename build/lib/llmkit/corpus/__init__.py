"""The clean stage: sources (files, datasets, built-in), normalisation, filters (presets), dedup (exact, MinHash)."""
