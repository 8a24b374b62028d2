"""prefect.yaml's deployment defaults run the tiny demo: every deployment's `parameters` validate
against its flow's pydantic config, and the flows that use CUDA get the GPU job variables."""

from __future__ import annotations

import importlib
from typing import Any

import yaml
from helpers import REPO
from pydantic import BaseModel

GPU_DEPLOYMENTS = {
    "train-codec",
    "eval-codec",
    "compare-codecs",
    "train-lm",
    "evaluate",
    "pipeline",
}


def _deployments() -> list[dict[str, Any]]:
    deployments: list[dict[str, Any]] = yaml.safe_load((REPO / "prefect.yaml").read_text())[
        "deployments"
    ]
    return deployments


def _config_model(entrypoint: str) -> type[BaseModel]:
    path, function = entrypoint.split(":")
    flow = getattr(
        importlib.import_module("codecflow." + path.removesuffix(".py").replace("/", ".")), function
    )
    (parameter,) = flow.parameters.properties
    model = getattr(importlib.import_module(flow.fn.__module__), flow.fn.__annotations__[parameter])
    assert issubclass(model, BaseModel)
    return model


def test_every_deployment_has_default_parameters_that_validate() -> None:
    for deployment in _deployments():
        assert set(deployment["parameters"]) == {"cfg"}, deployment["name"]
        model = _config_model(deployment["entrypoint"])
        cfg = model.model_validate(deployment["parameters"]["cfg"])
        # The defaults stay inside the demo's run folder and read the embedded corpus.
        for field in ("out", "root", "dataset", "manifest", "checkpoint", "train_run"):
            value = getattr(cfg, field, None)
            assert value is None or value.startswith("runs/demo"), (deployment["name"], field)


def test_the_demo_deployments_mirror_configs_demo_yaml() -> None:
    from codecflow.schemas.configs import PipelineConfig

    demo = PipelineConfig.model_validate(yaml.safe_load((REPO / "configs/demo.yaml").read_text()))
    by_name = {d["name"]: d["parameters"]["cfg"] for d in _deployments()}
    assert PipelineConfig.model_validate(by_name["pipeline"]) == demo
    assert by_name["acquire"]["md5"] == demo.acquire.md5
    assert by_name["acquire"]["source"] == demo.acquire.source
    lm = {k: v for k, v in by_name["train-lm"].items() if k not in {"dataset", "out"}}
    assert lm == demo.train_lm.model_dump(exclude_unset=True)
    # Each stage reads what the one before writes.
    assert by_name["tokenize"]["manifest"] == "runs/demo/acquire/manifest/segments.parquet"
    assert by_name["train-lm"]["dataset"] == by_name["tokenize"]["out"]
    assert by_name["evaluate"]["checkpoint"] == f"{by_name['train-lm']['out']}/checkpoint"


def test_gpu_flows_get_the_gpu_job_variables_and_the_others_do_not() -> None:
    for deployment in _deployments():
        pool = deployment["work_pool"]
        assert pool["name"] == "codecflow-local"
        env = pool["job_variables"].get("env", {})
        expected = (
            {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"} if deployment["name"] in GPU_DEPLOYMENTS else {}
        )
        assert env == expected, deployment["name"]
