"""prefect.yaml names a deployment for every flow, and each entrypoint loads a flow whose one
parameter is a validated pydantic config (the form the Prefect UI renders)."""

from __future__ import annotations

import importlib

import yaml
from helpers import REPO
from pydantic import BaseModel


def test_every_deployment_entrypoint_is_a_flow_with_a_config_parameter() -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert names == {
        "acquire",
        "train-codec",
        "eval-codec",
        "tokenize",
        "train-lm",
        "evaluate",
        "pipeline",
    }
    for deployment in spec["deployments"]:
        path, function = deployment["entrypoint"].split(":")
        flow = getattr(
            importlib.import_module(path.removesuffix(".py").replace("/", ".")), function
        )
        assert flow.name == deployment["name"]
        (parameter,) = flow.parameters.properties
        annotation = flow.fn.__annotations__[parameter]
        config = getattr(importlib.import_module(flow.fn.__module__), annotation)
        assert issubclass(config, BaseModel) and config.model_config.get("extra") == "forbid"
