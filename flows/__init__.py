"""codecflow flows."""
