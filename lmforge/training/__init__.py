"""Training: the loop, checkpoints, distributed launch, evaluation, progress."""
