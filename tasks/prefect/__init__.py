"""The only package of `tasks` that imports Prefect: the task wrappers, cache keys and progress
artifacts."""
