"""Stage 4: evaluate LM checkpoints (spoken continuations, metrics, HTML reports) and codecs."""
