"""schemas/post.py: every value cites its source; the post's LM and codec losses follow the table."""

from __future__ import annotations

import inspect

import pytest
import torch
from pydantic import ValidationError

from codecflow.models.gpt import GPT
from codecflow.models.losses import codec_loss
from codecflow.models.presets import GPT_PRESETS, gpt_config
from codecflow.schemas.post import (
    POST_CODEC,
    POST_LM_PARAMETERS,
    POST_LM_RECIPES,
    POST_LM_SHAPE,
    PostLMShape,
)


def test_every_record_cites_every_value() -> None:
    for record in (POST_LM_SHAPE, POST_CODEC, *POST_LM_RECIPES.values()):
        fields = set(type(record).model_fields) - {"sources"}
        assert set(record.sources) == fields
        assert all("@" in source for source in record.sources.values())
    values = POST_LM_SHAPE.model_dump(exclude={"sources"})
    with pytest.raises(ValidationError, match="missing \\['bias'\\]"):
        PostLMShape(**values, sources={k: "train.py@x" for k in values if k != "bias"})


def test_post_lm_shape_is_the_reference() -> None:
    # nanoGPTaudio train.py: bias = False (no config overrides it); the configs: dropout 0.1.
    assert GPT_PRESETS["post"] == dict(
        n_layer=12, n_head=16, n_embd=1024, block_size=2048, bias=False, dropout=0.1
    )


@pytest.mark.parametrize(
    ("vocab", "count"), [(256, 151_282_688), (1024, 152_069_120), (2048, 153_117_696)]
)
def test_post_lm_parameter_count_as_nanogpt_counts(vocab: int, count: int) -> None:
    with torch.device("meta"):  # no memory allocated
        model = GPT(gpt_config("post", vocab_size=vocab))
    # nanoGPT's get_num_params: every parameter once (wte tied to lm_head), minus wpe.
    assert model.num_parameters() == count == POST_LM_PARAMETERS[vocab]
    c = 1024
    assert count == 12 * (12 * c * c + 2 * c) + c + vocab * c


def test_recipes_keep_min_lr_a_tenth_and_the_post_context() -> None:
    for recipe in POST_LM_RECIPES.values():
        assert recipe.min_lr == pytest.approx(recipe.learning_rate / 10)
        assert recipe.block_size == POST_LM_SHAPE.block_size
        assert recipe.dropout == POST_LM_SHAPE.dropout


def test_codec_loss_weights_are_the_posts() -> None:
    defaults = inspect.signature(codec_loss).parameters
    assert defaults["spectral_weight"].default == POST_CODEC.spectral_weight == 1.0
    assert defaults["commitment_weight"].default == POST_CODEC.commitment_weight == 0.02
