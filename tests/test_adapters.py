"""``tp_rag.adapters``: the settings every adapter shares, and ``load_encoder``.

That the settings' fields are ``TPConfig``'s is checked in ``tests/test_layout.py``.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

from tp_rag.adapters import EncoderSettings, TPSettings, load_encoder
from tp_rag.config import DEFAULT_MODEL, TPConfig

SETTINGS = [f for f in dataclasses.fields(TPConfig) if f.name not in ("model", "model_digest")]


def test_each_setting_has_tpconfigs_type_and_defaults_to_none() -> None:
    """Every TPConfig setting is a field of TPConfig's own type or None, and None by default
    (the encoder's default for the model); only TPSettings has batch_size."""
    hints = typing.get_type_hints(TPConfig)
    fields = TPSettings.model_fields
    for setting in SETTINGS:
        assert fields[setting.name].annotation == hints[setting.name] | None, setting.name
        assert fields[setting.name].default is None, setting.name
    assert "batch_size" not in EncoderSettings.model_fields
    assert fields["model_name"].default == DEFAULT_MODEL and fields["model_name"].alias == "model"


def test_every_field_is_described_with_tpconfigs_default() -> None:
    """Each field has a docstring (its description, shown by IDEs and API docs); a setting
    whose TPConfig default is a value names that value, so the text cannot drift from it."""
    fields = TPSettings.model_fields
    assert all(field.description for field in fields.values())
    for setting in SETTINGS:
        if setting.default is not None:
            assert repr(setting.default) in fields[setting.name].description, setting.name
    assert "hidden_states" in fields["output_layer"].description


def test_types_are_validated_with_the_choices() -> None:
    """A bad ``pooling`` fails with the valid values; a misspelt field is no setting at all."""
    with pytest.raises(ValidationError, match="'last' or 'mean'"):
        TPSettings(pooling="max")
    with pytest.raises(ValidationError, match="tp_stpo"):
        TPSettings(tp_stpo=3)
    assert TPSettings(tp_stop=3, model="m").encoder_settings()["tp_stop"] == 3


def test_encoder_settings_leave_out_what_was_not_given() -> None:
    """Unset settings are not passed on, so the model's preset still decides them."""
    given = TPSettings(tp=False, revision="main", batch_size=8).encoder_settings()
    assert given["tp"] is False and given["revision"] == "main" and given["batch_size"] == 8
    assert "tp_stop" not in given and "prompt" not in given
    assert "batch_size" not in EncoderSettings(tp=False).encoder_settings()


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
