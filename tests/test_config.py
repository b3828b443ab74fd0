"""TPConfig validates up front, lists valid choices, and fingerprints the embedding space."""

from __future__ import annotations

import pytest

from tp_rag import TPConfig

BASE = {"model_digest": "abc", "tp_start": 1, "tp_stop": 3, "output_layer": 4}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"prompt": "nope"}, "prompteol"),
        ({"pooling": "max"}, "last, mean"),
        ({"dtype": "int8"}, "auto, float32, bfloat16, float16"),
        ({"device": "tpu"}, "auto, cpu, cuda, cuda:N"),
        ({"tp_start": 3, "tp_stop": 3}, "must be smaller than tp_stop"),
        ({"tp_start": -1}, ">= 0"),
        ({"max_length": 0}, "positive integer"),
        ({"batch_size": 2.5}, "positive integer"),
        ({"output_layer": "last"}, "must be an integer"),
    ],
)
def test_invalid_settings_name_the_valid_choices(settings: dict, message: str) -> None:
    """Each bad value raises ValueError whose message lists the valid values or range."""
    with pytest.raises(ValueError, match=message):
        TPConfig(**settings)


def test_unknown_keys_list_valid_settings() -> None:
    """A misspelt setting raises TypeError listing every valid one."""
    with pytest.raises(TypeError, match=r"tp_stopp.*valid settings: .*tp_stop"):
        TPConfig.check_keys({"tp_stopp": 3}, "test")


def test_resolved_checks_depth_and_normalises_negative_layers() -> None:
    """-1 means the last hidden_states entry; out-of-range layers name the valid range."""
    config = TPConfig(**{**BASE, "output_layer": -1})
    assert config.resolved(8).output_layer == 8
    assert TPConfig(**{**BASE, "output_layer": -2}).resolved(8).output_layer == 7
    with pytest.raises(ValueError, match=r"\[-9, 8\]"):
        TPConfig(**{**BASE, "output_layer": 9}).resolved(8)
    with pytest.raises(ValueError, match="1 <= tp_stop <= 2"):
        TPConfig(**BASE).resolved(2)


def test_fingerprint_tracks_the_space_not_the_runtime() -> None:
    """Equal iff the vectors are the same: runtime knobs and model path do not count."""
    config = TPConfig(**BASE)
    same = [
        config.replace(batch_size=7),
        config.replace(device="cpu"),
        config.replace(dtype="bfloat16"),
        config.replace(model="/elsewhere/same-weights"),
        config.replace(clean_text=True),  # the default for a built-in prompt
        config.replace(prompt='This sentence : {pst}"{text}" means in one word:"', clean_text=True),
    ]
    different = [
        config.replace(tp=False),
        config.replace(tp_stop=4),
        config.replace(tp_start=0),
        config.replace(output_layer=5),
        config.replace(prompt="pcot"),
        config.replace(pooling="mean"),
        config.replace(normalize=False),
        config.replace(max_length=256),
        config.replace(model_digest="other"),
        config.replace(clean_text=False),
    ]
    assert all(c.fingerprint() == config.fingerprint() for c in same)
    fingerprints = {c.fingerprint() for c in different}
    assert len(fingerprints) == len(different) and config.fingerprint() not in fingerprints
    assert len(config.fingerprint()) == 16


def test_tp_off_fingerprint_ignores_the_tp_layers() -> None:
    """TP off overwrites nothing, so tp_start/tp_stop cannot change its vectors: its fingerprint
    is the same for any of them (and still differs from TP on's, and by output_layer)."""
    off = TPConfig(**BASE).replace(tp=False)
    assert off.replace(tp_stop=7).fingerprint() == off.fingerprint()
    assert off.replace(tp_start=0, tp_stop=2).fingerprint() == off.fingerprint()
    assert off.replace(output_layer=5).fingerprint() != off.fingerprint()
    assert TPConfig(**BASE).fingerprint() != off.fingerprint()


def test_config_is_immutable_and_round_trips() -> None:
    """TPConfig is frozen; to_dict() rebuilds an equal config."""
    config = TPConfig(**BASE)
    with pytest.raises(AttributeError):
        config.tp = False  # type: ignore[misc]
    assert TPConfig(**config.to_dict()) == config


def test_max_batch_tokens_is_a_runtime_setting() -> None:
    """It is validated (positive, room for one max_length prompt), ignored by the fingerprint,
    and None means the device's default, never below max_length."""
    config = TPConfig(**BASE)
    assert config.replace(max_batch_tokens=4096).fingerprint() == config.fingerprint()
    assert config.batch_token_budget("cpu") == 8192 and config.batch_token_budget("cuda") == 16384
    assert config.replace(max_length=20000).batch_token_budget("cpu") == 20000
    assert config.replace(max_batch_tokens=600).batch_token_budget("cuda") == 600
    with pytest.raises(ValueError, match=r"max_batch_tokens=100 is smaller than max_length=512"):
        TPConfig(max_batch_tokens=100)
    with pytest.raises(ValueError, match="positive integer"):
        TPConfig(max_batch_tokens=0)
    assert TPConfig.pick({"max_batch_tokens": 1024}) == {"max_batch_tokens": 1024}
