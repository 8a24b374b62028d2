"""Stage 3: train the RVQ codec and the GPT (one process or torchrun)."""
