"""The training library of pretrain, finetune and sweep: the loop (loop.py), its engines for
each layout (data_parallel.py, model_parallel.py, pipeline.py, parallelize.py, layout.py),
launching (launch.py, worker.py, distributed.py), checkpoints, metrics, the optimizer, and the
option groups every training stage shares (options.py)."""
