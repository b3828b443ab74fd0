"""``tp_rag.adapters``: the settings every adapter shares come from ``TPConfig`` itself."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydantic import ValidationError

from tp_rag.adapters import LOADING_OPTIONS, load_encoder, settings_model
from tp_rag.config import DEFAULT_MODEL, TPConfig


def test_fields_are_tpconfigs_plus_the_loading_options() -> None:
    """One field per TPConfig setting (model and digest aside), the loading options, the model
    and query_prompt; ``exclude`` leaves a setting out."""
    fields = settings_model().model_fields
    settings = {f.name for f in dataclasses.fields(TPConfig)} - {"model", "model_digest"}
    assert set(fields) == settings | set(LOADING_OPTIONS) | {"model_name", "query_prompt"}
    assert "batch_size" not in settings_model(exclude=("batch_size",)).model_fields
    assert fields["model_name"].default == DEFAULT_MODEL and fields["model_name"].alias == "model"


def test_descriptions_come_from_tpconfigs_docstrings_and_defaults() -> None:
    """Each setting is described by TPConfig's own attribute docstring and its real default,
    so the adapters cannot drift from config.py."""
    fields = settings_model().model_fields
    assert "hidden_states" in fields["output_layer"].description
    assert f"{TPConfig.max_length!r}" in fields["max_length"].description
    assert f"{TPConfig.batch_size!r}" in fields["batch_size"].description
    assert all(field.description for field in fields.values())
    assert all(fields[name].default is None for name in ("tp", "prompt", "tp_stop", "pooling"))


def test_types_are_validated_with_the_choices() -> None:
    """A bad ``pooling`` fails with the valid values; a misspelt field is no setting at all."""
    Settings = settings_model()
    with pytest.raises(ValidationError, match="'last' or 'mean'"):
        Settings(pooling="max")
    assert Settings(tp_stop=3, model="m").encoder_settings()["tp_stop"] == 3


def test_encoder_settings_leave_out_what_was_not_given() -> None:
    """Unset settings are not passed on, so the model's preset still decides them."""
    given = settings_model()(tp=False, revision="main").encoder_settings()
    assert given["tp"] is False and given["revision"] == "main"
    assert "tp_stop" not in given and "prompt" not in given


def test_load_encoder_checks_the_query_prompt_before_loading(tmp_path: Path) -> None:
    """A bad query template fails as such, before the (missing) model is looked for."""
    with pytest.raises(ValueError, match=r"query|template|prompt"):
        load_encoder(tmp_path / "no-model", query_prompt="no placeholder here")


def test_load_encoder_refuses_loading_options_inside_model_kwargs(tmp_path: Path) -> None:
    """model_kwargs is for AutoModel; trust_remote_code inside it is named, not passed on."""
    with pytest.raises(TypeError, match="trust_remote_code"):
        load_encoder(tmp_path, model_kwargs={"trust_remote_code": True})


def test_load_encoder_gives_the_encoder_the_settings(tiny_llama: Path) -> None:
    """The settings given reach the encoder's config; None means the encoder's default."""
    encoder = load_encoder(tiny_llama, tp_stop=3, tp=False, output_layer=None)
    assert encoder.config.tp_stop == 3 and encoder.config.tp is False
