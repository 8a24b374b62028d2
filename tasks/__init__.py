"""codecflow's work, as plain functions by stage; `tasks.prefect` makes them Prefect tasks.

Layers import downward only (checked by `make lint`): `tasks.prefect` -> the stages
(`acquire`, `tokenize`, `train`, `evaluate`, which never import each other) -> `tasks.loaders`
-> `tasks.data` -> `tasks.core`, with `models` and `schemas` below all.
"""
