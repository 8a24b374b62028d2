"""Cache keys follow the content of the inputs, not their names or times."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from codecflow.schemas.configs import EvaluateSettings
from codecflow.tasks.evaluate import lm as evaluate_module
from codecflow.tasks.prefect.caching import content_key, stable_json
from codecflow.tasks.prefect.wrappers import evaluate_task


def _key(params: dict) -> str:
    key_fn = content_key("dataset/dataset.json", "settings.prompt", code=(evaluate_module,))
    return key_fn(SimpleNamespace(task=evaluate_task), params)


def test_key_follows_content_and_parameters(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    info = tmp_path / "ds" / "dataset.json"
    info.write_text('{"fingerprint": "a"}')
    prompt = tmp_path / "p.wav"
    prompt.write_bytes(b"RIFF1")
    params = {"dataset": tmp_path / "ds", "settings": EvaluateSettings(prompt=str(prompt))}
    first = _key(params)
    assert _key(params) == first
    info.touch()  # a new mtime alone changes nothing
    assert _key(params) == first
    prompt.write_bytes(b"RIFF2")
    second = _key(params)
    assert second != first
    info.write_text('{"fingerprint": "b"}')
    assert _key(params) != second
    changed = {**params, "settings": EvaluateSettings(prompt=str(prompt), seed=1)}
    assert _key(changed) != _key(params)


def test_missing_input_keys_as_missing(tmp_path: Path) -> None:
    params = {"dataset": tmp_path / "none", "settings": EvaluateSettings(prompt="nope.wav")}
    assert _key(params) == _key(dict(params))


def test_stable_json_is_canonical() -> None:
    assert stable_json({"b": Path("/x"), "a": (1, 2)}) == '{"a": [1, 2], "b": "/x"}'


def test_a_package_in_code_keys_on_every_module_of_it() -> None:
    """`code=(codecflow.tasks.train,)`: an edit to the scaffolding the trainers share invalidates both."""
    import inspect

    import codecflow.tasks.train
    from codecflow.tasks.prefect.caching import _source
    from codecflow.tasks.train import codec, lm, scaffold

    source = _source(codecflow.tasks.train)
    for module in (codec, lm, scaffold):
        assert inspect.getsource(module).encode() in source


def test_a_module_named_keys_as_its_source_without_being_imported() -> None:
    """`code` takes a module's name: the same key as the module itself, and nothing imported
    (the tokenizer loaders import torch; a tokenize flow keys on them without it)."""
    from codecflow.tasks import loaders

    task = SimpleNamespace(task=evaluate_task)
    by_module = content_key(code=(loaders,))(task, {})
    by_name = content_key(code=("codecflow.tasks.loaders",))(task, {})
    assert by_name == by_module
    assert by_name != content_key(code=("codecflow.tasks.core.storage",))(task, {})


def test_the_data_flows_start_without_torch() -> None:
    """acquire and tokenize import no torch (0.9 s of every such command): their tasks are in
    `tasks.prefect.data_tasks`, and the thread policy waits for torch's own import."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import codecflow.flows.acquire, codecflow.flows.tokenize\n"
        "from codecflow.tasks.core.threads import apply_thread_policy\n"
        "apply_thread_policy()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
