"""Pre-training: the training loop, optimiser set-up and checkpoints."""
