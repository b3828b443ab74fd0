"""Presets: the authors' settings for their models, matched on config; a depth rule otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import Gemma2Config, LlamaConfig, Qwen2Config

from tp_rag import TPEncoder
from tp_rag.presets import default_settings, depth_rule


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            LlamaConfig(num_hidden_layers=32, hidden_size=4096, vocab_size=32000),
            {"prompt": "prompteol", "tp_start": 1, "tp_stop": 7, "output_layer": 27},
        ),
        (
            LlamaConfig(num_hidden_layers=40, hidden_size=5120, vocab_size=32000),
            {"prompt": "pcot", "tp_start": 1, "tp_stop": 7, "output_layer": -2},
        ),
        (
            LlamaConfig(num_hidden_layers=32, hidden_size=4096, vocab_size=128256),
            {"prompt": "pcot", "tp_start": 1, "tp_stop": 3, "output_layer": -2},
        ),
        (
            Qwen2Config(num_hidden_layers=28, hidden_size=3584, vocab_size=152064),
            {"prompt": "pcot", "tp_start": 1, "tp_stop": 6, "output_layer": -2},
        ),
        (
            Gemma2Config(num_hidden_layers=42, hidden_size=3584, vocab_size=256000),
            {"prompt": "pcot", "tp_start": 1, "tp_stop": 6, "output_layer": -2},
        ),
    ],
)
def test_published_presets_match_the_paper(config: object, expected: dict) -> None:
    """Llama-2-7B/13B, Llama-3-8B, Qwen2-7B, Gemma2-9B get the paper's settings."""
    assert default_settings(config) == expected


def test_depth_rule_scales_llama2_7b() -> None:
    """Unpublished models: stop = round(7/32 L), layer = round(27/32 L); 32 layers -> 7 and 27."""
    assert depth_rule(32) == {
        "prompt": "prompteol",
        "tp_start": 1,
        "tp_stop": 7,
        "output_layer": 27,
    }
    assert depth_rule(24) == {
        "prompt": "prompteol",
        "tp_start": 1,
        "tp_stop": 5,
        "output_layer": 20,
    }
    for layers in range(1, 80):
        rule = depth_rule(layers)
        assert 0 <= rule["tp_start"] < rule["tp_stop"] <= layers
        assert 1 <= rule["output_layer"] <= layers


def test_priority_explicit_over_file_over_rule(tiny_llama: Path, tmp_path: Path) -> None:
    """Keyword settings beat a preset file, which beats the built-in default."""
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"settings": {"tp_stop": 3, "output_layer": 2}}))
    encoder = TPEncoder.from_pretrained(tiny_llama, preset=preset, output_layer=4)
    assert (encoder.config.tp_start, encoder.config.tp_stop) == (1, 3)
    assert encoder.config.output_layer == 4
    plain = TPEncoder.from_pretrained(tiny_llama)
    assert plain.config.tp_stop == depth_rule(4)["tp_stop"]


def test_bad_preset_files_are_named(tmp_path: Path, tiny_llama: Path) -> None:
    """Missing, malformed or misspelt preset files raise errors naming the file or key."""
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        TPEncoder.from_pretrained(tiny_llama, preset=tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        TPEncoder.from_pretrained(tiny_llama, preset=broken)
    typo = tmp_path / "typo.json"
    typo.write_text('{"tp_stopp": 3}')
    with pytest.raises(TypeError, match="tp_stopp"):
        TPEncoder.from_pretrained(tiny_llama, preset=typo)


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("meta-llama--Llama-2-7b-hf", ("prompteol", 1, 7, 27)),
        ("meta-llama--Llama-2-13b-hf", ("pcot", 1, 7, -2)),
        ("meta-llama--Meta-Llama-3-8B", ("pcot", 1, 3, -2)),
        ("Qwen--Qwen2-7B-Instruct", ("pcot", 1, 6, -2)),
        ("google--gemma-2-9b-it", ("pcot", 1, 6, -2)),
        # No published settings: the depth rule, 1 / round(7/32 L) / round(27/32 L).
        ("Qwen--Qwen2.5-0.5B-Instruct", ("prompteol", 1, 5, 20)),  # 24 layers
        ("mistralai--Mistral-7B-v0.1", ("prompteol", 1, 7, 27)),  # 32 layers
        ("TinyLlama--TinyLlama-1.1B-Chat-v1.0", ("prompteol", 1, 5, 19)),  # 22 layers
    ],
)
def test_real_configs_get_the_authors_settings(
    shared_dir: Path, folder: str, expected: tuple
) -> None:
    """The real config.json of each model resolves to the paper's settings (or the rule)."""
    from transformers import AutoConfig

    settings = default_settings(AutoConfig.from_pretrained(shared_dir / "models" / folder))
    got = (settings["prompt"], settings["tp_start"], settings["tp_stop"], settings["output_layer"])
    assert got == expected
