"""Infrastructure every stage uses: errors, storage (local or fsspec), output ownership and locks,
progress, runtime, plots."""
