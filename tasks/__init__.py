"""codecflow tasks."""
