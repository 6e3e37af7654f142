"""`llmkit plan`: parameters, FLOPs, memory per device and speed of a training layout, before launching it."""
