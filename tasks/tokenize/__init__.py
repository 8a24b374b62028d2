"""Stage 2: tokenize a segment manifest into resumable Arrow and WebDataset shards, with size
accounting."""
