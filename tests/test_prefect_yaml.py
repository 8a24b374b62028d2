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
        "compare-codecs",
        "tokenize",
        "train-lm",
        "evaluate",
        "evaluate-scheduled",
        "evaluate-on-train-lm",
        "pipeline",
    }
    for deployment in spec["deployments"]:
        path, function = deployment["entrypoint"].split(":")
        flow = getattr(
            importlib.import_module("codecflow." + path.removesuffix(".py").replace("/", ".")),
            function,
        )
        assert deployment["name"].startswith(flow.name)
        (parameter,) = flow.parameters.properties
        annotation = flow.fn.__annotations__[parameter]
        config = getattr(importlib.import_module(flow.fn.__module__), annotation)
        assert issubclass(config, BaseModel) and config.model_config.get("extra") == "forbid"


def test_evaluation_schedule_and_trigger_parameters_validate() -> None:
    from codecflow.schemas.configs import EvaluateConfig

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    scheduled = by_name["evaluate-scheduled"]
    assert scheduled["schedules"][0]["cron"] == "*/30 * * * *"
    assert scheduled["schedules"][0]["active"] is False  # shipped paused: a user switches it on
    cfg = EvaluateConfig.model_validate(scheduled["parameters"]["cfg"])
    assert cfg.train_run == "runs/demo/lm" and cfg.while_training is False  # the final one
    (trigger,) = by_name["evaluate-on-train-lm"]["triggers"]
    assert trigger["expect"] == ["prefect.flow-run.Completed"]
    # The train-lm flow and its deployment: a train-lm sub-flow of a pipeline (no deployment)
    # does not trigger an evaluation; the pipeline evaluates by itself.
    assert trigger["match_related"] == [
        {"prefect.resource.role": "flow", "prefect.resource.name": "train-lm"},
        {"prefect.resource.role": "deployment", "prefect.resource.name": "train-lm"},
    ]
    from prefect.events.schemas.automations import EventTrigger

    assert len(EventTrigger(match_related=trigger["match_related"]).match_related) == 2  # type: ignore[arg-type]
    # The templates render to strings, so the rendered parameters validate as a config.
    rendered = {
        k: v.replace("{{ flow_run.parameters['cfg']['out'] }}", "runs/x/lm").replace(
            "{{ flow_run.parameters['cfg']['dataset'] }}", "runs/x/tokens/mu-law-256"
        )
        if isinstance(v, str)
        else v
        for k, v in trigger["parameters"]["cfg"].items()
    }
    cfg = EvaluateConfig.model_validate(rendered)
    assert (cfg.train_run, cfg.out) == ("runs/x/lm", "runs/x/lm/evaluations")


def test_scheduled_and_triggered_evaluations_ask_the_pipelines_question() -> None:
    """The same settings as the demo pipeline's evaluation: a checkpoint the pipeline evaluated
    has the same report identity, so its report is reused, not computed again."""
    from codecflow.schemas.configs import EvaluateSettings, PipelineConfig

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    pipeline = PipelineConfig.model_validate(by_name["pipeline"]["parameters"]["cfg"])
    wanted = pipeline.evaluate.model_dump()
    (trigger,) = by_name["evaluate-on-train-lm"]["triggers"]
    for cfg in (
        by_name["evaluate-scheduled"]["parameters"]["cfg"],
        by_name["evaluate-on-train-lm"]["parameters"]["cfg"],
        trigger["parameters"]["cfg"],
    ):
        settings = {k: v for k, v in cfg.items() if k in EvaluateSettings.model_fields}
        assert EvaluateSettings.model_validate(settings).model_dump() == wanted


def test_every_deployment_is_tagged_with_its_stage_and_device() -> None:
    """Tags the UI filters on: the flow's name (the stage), and gpu for every flow that runs on
    CUDA when the machine has one (all but acquire)."""
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    for deployment in spec["deployments"]:
        flow = deployment["entrypoint"].split(":")[0].removeprefix("flows/").removesuffix(".py")
        stage, device = deployment["tags"]
        assert stage == flow.replace("_", "-"), deployment["name"]
        assert device == ("cpu" if stage == "acquire" else "gpu"), deployment["name"]
