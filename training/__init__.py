"""The mechanics of a training run: the loop, checkpoints, the run folder, and the distributed pieces."""
