"""Default TP settings for a model: the authors' settings where they published one, else a rule.

The paper tunes ``tp_start``, ``tp_stop`` and ``output_layer`` on 7B-13B models. For a model it
did not publish settings for, the defaults scale the Llama-2-7B choice with depth:
``tp_start = 1``, ``tp_stop = round(7/32 * L)`` and ``output_layer = round(27/32 * L)`` for a model
with ``L`` decoder layers (clamped so that ``tp_start < tp_stop <= L`` and
``1 <= output_layer <= L``), with the PromptEOL prompt. ``tp-rag tune`` picks better values on
labelled data.

HTP (``method="htp"``) has one published setting, for Mistral-7B-Instruct-v0.3 (32 layers):
``tp_start = 1``, ``tp_stop = 7``, ``output_layer = -2`` (the input of the last layer). Other
depths scale it the same way: ``tp_stop = round(7/32 * L)`` and ``output_layer =
round(31/32 * L)``, kept below ``L`` so the readout stays before the last layer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

from tp_rag.loading import num_decoder_layers


@dataclass(frozen=True)
class PublishedPreset:
    """The authors' settings for one model, matched on its architecture."""

    name: str
    model_type: str
    num_hidden_layers: int
    hidden_size: int
    vocab_size: int
    settings: dict[str, Any]


PUBLISHED_PRESETS: tuple[PublishedPreset, ...] = (
    PublishedPreset(
        "Llama-2-7B",
        "llama",
        32,
        4096,
        32000,
        {"prompt": "prompteol", "tp_start": 1, "tp_stop": 7, "output_layer": 27},
    ),
    PublishedPreset(
        "Llama-2-13B",
        "llama",
        40,
        5120,
        32000,
        {"prompt": "pcot", "tp_start": 1, "tp_stop": 7, "output_layer": -2},
    ),
    PublishedPreset(
        "Llama-3-8B",
        "llama",
        32,
        4096,
        128256,
        {"prompt": "pcot", "tp_start": 1, "tp_stop": 3, "output_layer": -2},
    ),
    PublishedPreset(
        "Qwen2-7B",
        "qwen2",
        28,
        3584,
        152064,
        {"prompt": "pcot", "tp_start": 1, "tp_stop": 6, "output_layer": -2},
    ),
    PublishedPreset(
        "Gemma2-9B",
        "gemma2",
        42,
        3584,
        256000,
        {"prompt": "pcot", "tp_start": 1, "tp_stop": 6, "output_layer": -2},
    ),
)


def match_published(config: PretrainedConfig) -> PublishedPreset | None:
    """The published preset whose architecture matches ``config``, if any."""
    text = config.get_text_config()
    shape = (text.model_type, text.num_hidden_layers, text.hidden_size, text.vocab_size)
    for preset in PUBLISHED_PRESETS:
        if shape == (
            preset.model_type,
            preset.num_hidden_layers,
            preset.hidden_size,
            preset.vocab_size,
        ):
            return preset
    return None


def depth_rule(num_layers: int) -> dict[str, Any]:
    """Settings for an unpublished model: Llama-2-7B's choice scaled to ``num_layers``."""
    tp_stop = min(max(round(7 / 32 * num_layers), 2), num_layers)
    tp_start = min(1, tp_stop - 1)
    output_layer = min(max(round(27 / 32 * num_layers), 1), num_layers)
    return {
        "prompt": "prompteol",
        "tp_start": tp_start,
        "tp_stop": tp_stop,
        "output_layer": output_layer,
    }


def htp_depth_rule(num_layers: int) -> dict[str, Any]:
    """HTP settings: the published Mistral-7B setting (1, 7, -2 of 32 layers) scaled to depth.

    >>> htp_depth_rule(32), htp_depth_rule(24)["output_layer"]
    ({'tp_start': 1, 'tp_stop': 7, 'output_layer': 31}, 23)
    """
    settings = depth_rule(num_layers)
    output_layer = min(max(round(31 / 32 * num_layers), 1), max(num_layers - 1, 1))
    return {
        "tp_start": settings["tp_start"],
        "tp_stop": settings["tp_stop"],
        "output_layer": output_layer,
    }


def default_settings(config: PretrainedConfig, method: str = "tp") -> dict[str, Any]:
    """The published preset for this architecture, or the depth rule (HTP: its own rule)."""
    if method == "htp":  # the TP presets' prompts are TP templates; HTP's come from TPConfig
        return htp_depth_rule(num_decoder_layers(config))
    published = match_published(config)
    if published is not None:
        return dict(published.settings)
    return depth_rule(num_decoder_layers(config))


def read_preset_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON preset (as written by ``tp-rag tune``): a mapping of TPConfig fields.

    A top-level ``"settings"`` key is accepted too, so a preset can carry notes beside it.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"preset file {str(path)!r} does not exist") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"preset file {str(path)!r} is not valid JSON: {error}") from None
    if isinstance(data, dict) and isinstance(data.get("settings"), dict):
        data = data["settings"]
    if not isinstance(data, dict):
        raise ValueError(
            f"preset file {str(path)!r} must hold a JSON object of TPConfig fields, "
            'e.g. {"tp_stop": 5, "output_layer": 20}'
        )
    return data
