"""``TPEncoder``: sentence embeddings from a decoder-only LLM with Token Prepending."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from tqdm.auto import tqdm

from tp_rag import loading
from tp_rag.config import DEFAULT_MODEL, TPConfig, hidden_states_index
from tp_rag.presets import default_settings, num_decoder_layers, read_preset_file
from tp_rag.prompts import PLACEHOLDER, clean_sentence, render, resolve_prompt
from tp_rag.tp import BatchState, ReadoutReached, tp_hooks
from tp_rag.vectors import unit_rows

logger = logging.getLogger(__name__)

_PROGRESS_MIN_BATCHES = 8  # shorter jobs get no progress bar unless asked


@dataclass
class _Features:
    """One tokenized prompt."""

    input_ids: list[int]
    text_mask: list[bool]  # tokens that overlap the text (mean pooling)
    placeholder_index: int  # -1 when TP is off
    truncated: bool


class TPEncoder:
    """Sentence embeddings with Token Prepending over a Hugging Face decoder-only LLM.

    >>> enc = TPEncoder.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")  # doctest: +SKIP
    >>> enc.encode(["A man plays a guitar.", "Is it raining?"]).shape  # doctest: +SKIP
    (2, 896)
    """

    def __init__(
        self,
        loaded: loading.LoadedModel,
        config: TPConfig,
        load_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Use ``TPEncoder.from_pretrained``; this wires a loaded model to a resolved config."""
        self._loaded = loaded
        self.config = config
        self.load_kwargs: dict[str, Any] = dict(load_kwargs or {})
        """The loading options given to ``from_pretrained`` (``revision``,
        ``trust_remote_code``, ``model_kwargs``), so the same model can be loaded again."""
        self._num_layers = len(loaded.layers)
        self._fitting_templates: set[tuple[str, ...]] = set()  # checked against max_length
        self._check_max_length(config.templates)

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | Path | None = None,
        *,
        preset: str | Path | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        **settings: Any,
    ) -> TPEncoder:
        """Load a model (a hub name or a local directory) and set up TP.

        Settings not given come from ``preset`` (a JSON file, e.g. written by ``tp-rag tune``),
        then from the authors' settings for the models they published, then from the depth rule
        in ``tp_rag.presets``. ``model_kwargs`` go to ``AutoModel.from_pretrained``.

        >>> enc = TPEncoder.from_pretrained("/models/llama-2-7b", tp_stop=7)  # doctest: +SKIP
        """
        TPConfig.check_keys(settings, "TPEncoder.from_pretrained()")
        name = str(model_name_or_path) if model_name_or_path else DEFAULT_MODEL
        from_file: dict[str, Any] = {}
        if preset is not None:
            from_file = read_preset_file(preset)
            TPConfig.check_keys(from_file, f"preset file {str(preset)!r}")
            from_file.pop("model", None)
        # Validate the caller's own settings before touching the network or the disk.
        TPConfig(**{**from_file, **settings})
        hf_config = loading.load_config(
            name, revision=revision, trust_remote_code=trust_remote_code
        )
        config = TPConfig(
            **{**default_settings(hf_config), **from_file, **settings, "model": name}
        ).resolved(num_decoder_layers(hf_config))
        device = loading.resolve_device(config.device)
        loaded = loading.load_model(
            name,
            config=hf_config,
            device=device,
            dtype=loading.resolve_dtype(config.dtype, device),
            revision=revision,
            trust_remote_code=trust_remote_code,
            **(model_kwargs or {}),
        )
        load_kwargs = {
            "revision": revision,
            "trust_remote_code": trust_remote_code,
            "model_kwargs": dict(model_kwargs or {}),
        }
        return cls(loaded, config.replace(model_digest=loaded.digest), load_kwargs)

    @property
    def num_layers(self) -> int:
        """Number of decoder layers of the model (``output_layer`` ranges over 0..num_layers)."""
        return self._num_layers

    @property
    def dimension(self) -> int:
        """Width of the vectors."""
        return int(self._loaded.model.get_input_embeddings().weight.shape[1])

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer, with ``<PST>`` added."""
        return self._loaded.tokenizer

    @property
    def placeholder_embedding(self) -> torch.Tensor:
        """The ``<PST>`` row of the input embedding table (1-D)."""
        weight = self._loaded.model.get_input_embeddings().weight
        return weight[self._loaded.placeholder_id].detach()

    def __repr__(self) -> str:
        c = self.config
        return (
            f"TPEncoder(model={c.model!r}, prompt={c.prompt!r}, tp={c.tp}, tp_start={c.tp_start}, "
            f"tp_stop={c.tp_stop}, output_layer={c.output_layer}, pooling={c.pooling!r}, "
            f"device={str(self._loaded.device)!r}, dtype={str(self._loaded.dtype)!r})"
        )

    def with_settings(self, **changes: Any) -> TPEncoder:
        """An encoder over the same loaded weights with other settings (no reload).

        >>> enc.with_settings(tp_stop=5, output_layer=-2)  # doctest: +SKIP
        """
        TPConfig.check_keys(changes, "with_settings()")
        fixed = sorted(set(changes) & {"model", "model_digest", "device", "dtype"})
        if fixed:
            raise ValueError(
                f"{', '.join(fixed)} select the loaded weights; load another encoder with "
                "TPEncoder.from_pretrained(...) to change them"
            )
        config = self.config.replace(**changes).resolved(self._num_layers)
        return TPEncoder(self._loaded, config, self.load_kwargs)

    @overload
    def encode(
        self,
        texts: str,
        *,
        tp: bool | None = ...,
        prompt: str | None = ...,
        batch_size: int | None = ...,
        show_progress: bool | None = ...,
    ) -> np.ndarray: ...
    @overload
    def encode(
        self,
        texts: Sequence[str],
        *,
        tp: bool | None = ...,
        prompt: str | None = ...,
        batch_size: int | None = ...,
        show_progress: bool | None = ...,
    ) -> np.ndarray: ...
    def encode(
        self,
        texts: str | Sequence[str],
        *,
        tp: bool | None = None,
        prompt: str | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Embed one text (gives shape ``(d,)``) or a list of texts (gives ``(n, d)``), float32.

        ``tp``, ``prompt`` and ``batch_size`` override the config for this call (``tp=False``
        is the same prompt without the placeholder, on the same loaded weights; ``prompt`` lets
        queries use another template than documents). ``show_progress=None`` shows a bar only
        for long jobs.

        >>> enc.encode("one text").shape  # doctest: +SKIP
        (896,)
        """
        layer = self.config.output_layer
        assert layer is not None  # resolved in __init__
        return self.encode_layers(
            texts,
            [layer],
            tp=tp,
            prompt=prompt,
            batch_size=batch_size,
            show_progress=show_progress,
        )[layer]

    @torch.inference_mode()
    def encode_layers(
        self,
        texts: str | Sequence[str],
        layers: Sequence[int],
        *,
        tp: bool | None = None,
        prompt: str | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> dict[int, np.ndarray]:
        """Embed texts read out at several layers in one forward pass per text.

        ``layers`` are ``hidden_states`` indices (as ``output_layer``); the result maps each to
        the vectors ``encode`` would give with that ``output_layer``. Used by ``tp-rag tune``.

        >>> enc.encode_layers(["a", "b"], [10, 20, -1])[20].shape  # doctest: +SKIP
        (2, 896)
        """
        single = isinstance(texts, str)
        items = _check_texts(texts)
        readout = {layer: hidden_states_index(layer, self._num_layers) for layer in layers}
        use_tp = self.config.tp if tp is None else bool(tp)
        templates = resolve_prompt(prompt) if prompt is not None else self.config.templates
        self._check_max_length(templates)
        if not items:
            empty = np.zeros((0, self.dimension), dtype=np.float32)
            return {layer: empty for layer in layers}
        if self.config.cleans_text:
            items = [clean_sentence(t) for t in items]

        features = [
            self._tokenize(text, template, tp=use_tp) for text in items for template in templates
        ]
        per_text = len(templates)
        truncated = sum(
            any(f.truncated for f in features[i : i + per_text])
            for i in range(0, len(features), per_text)
        )
        if truncated:
            logger.warning(
                "%d of %d texts did not fit into max_length=%d tokens and were cut "
                "(the prompt template and placeholder were kept).",
                truncated,
                len(items),
                self.config.max_length,
            )
        pooled = self._run(
            features,
            readout_layers=sorted(set(readout.values())),
            tp=use_tp,
            batch_size=batch_size or self.config.batch_size,
            show_progress=show_progress,
        )
        result = {}
        for layer, index in readout.items():
            vectors = pooled[index]
            if len(templates) > 1:  # MetaEOL: average the vectors of the prompts
                vectors = vectors.reshape(len(items), len(templates), -1).mean(axis=1)
            if self.config.normalize:
                vectors = unit_rows(vectors)
            result[layer] = vectors[0] if single else vectors
        return result

    def _check_max_length(self, templates: tuple[str, ...]) -> None:
        if templates in self._fitting_templates:
            return
        for template in templates:
            for tp in (True, False):
                length = len(self._tokenize("", template, tp=tp, truncate=False).input_ids)
                if length >= self.config.max_length:
                    raise ValueError(
                        f"max_length={self.config.max_length} leaves no room for text: the "
                        f"prompt template alone is {length} tokens; use max_length >= "
                        f"{length + 16}"
                    )
        self._fitting_templates.add(templates)

    def _tokenize(self, text: str, template: str, *, tp: bool, truncate: bool = True) -> _Features:
        """Tokenize the whole prompt (so ids equal the tokenizer's own), then cut only text."""
        prompt = render(template, text, tp=tp)
        encoding = self.tokenizer(prompt.text, return_offsets_mapping=True)
        ids: list[int] = encoding["input_ids"]
        offsets: list[tuple[int, int]] = encoding["offset_mapping"]
        start, end = prompt.text_span
        inside = [s >= start and e <= end and e > s for s, e in offsets]
        overlaps = [s < end and e > start for s, e in offsets]

        excess = len(ids) - self.config.max_length if truncate else 0
        if excess > 0:
            cut = {i for i, is_text in enumerate(inside) if is_text}
            keep_text = sorted(cut)[: max(len(cut) - excess, 0)]
            drop = cut - set(keep_text)
            keep = [i for i in range(len(ids)) if i not in drop]
            ids, offsets, overlaps = (
                [ids[i] for i in keep],
                [offsets[i] for i in keep],
                [overlaps[i] for i in keep],
            )

        placeholder_index = -1
        if prompt.placeholder_start is not None:
            matches = [
                i
                for i, (token, (s, _)) in enumerate(zip(ids, offsets, strict=True))
                if token == self._loaded.placeholder_id and s == prompt.placeholder_start
            ]
            if len(matches) != 1:
                raise RuntimeError(
                    f"the tokenizer did not keep {PLACEHOLDER} as one "
                    f"token in {prompt.text!r}; please report this with the model name"
                )
            placeholder_index = matches[0]
        return _Features(ids, overlaps, placeholder_index, truncated=excess > 0)

    def _run(
        self,
        features: list[_Features],
        *,
        readout_layers: list[int],
        tp: bool,
        batch_size: int,
        show_progress: bool | None,
    ) -> dict[int, np.ndarray]:
        """Forward the prompts in length-sorted batches; pooled vectors per layer, input order."""
        loaded = self._loaded
        order = sorted(range(len(features)), key=lambda i: -len(features[i].input_ids))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if show_progress is None:
            show_progress = len(batches) >= _PROGRESS_MIN_BATCHES
        out = {
            layer: np.empty((len(features), self.dimension), dtype=np.float32)
            for layer in readout_layers
        }
        state = BatchState(on_readout=lambda layer, hidden: None)
        assert self.config.tp_start is not None and self.config.tp_stop is not None
        tp_layers = range(self.config.tp_start, self.config.tp_stop) if tp else range(0)
        with (
            loaded.lock,
            tp_hooks(loaded.layers, state, tp_layers=tp_layers, readout_layers=readout_layers),
        ):
            for batch in tqdm(batches, desc="Batches", disable=not show_progress):
                pooled = self._forward([features[i] for i in batch], state)
                for layer, vectors in pooled.items():
                    out[layer][batch] = vectors
        return out

    def _forward(self, batch: list[_Features], state: BatchState) -> dict[int, np.ndarray]:
        """One left-padded batch through the model up to the deepest readout layer, pooled."""
        loaded = self._loaded
        width = max(len(f.input_ids) for f in batch)
        pad_id = loaded.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        text_mask = torch.zeros((len(batch), width), dtype=torch.bool)
        placeholder = torch.zeros(len(batch), dtype=torch.long)
        for row, f in enumerate(batch):
            pad = width - len(f.input_ids)
            input_ids[row, pad:] = torch.tensor(f.input_ids)
            attention_mask[row, pad:] = 1
            text_mask[row, pad:] = torch.tensor(f.text_mask)
            placeholder[row] = pad + f.placeholder_index
        # Positions count real tokens only, so a left-padded row sees the same positions as
        # when it is alone (absolute-position models such as GPT-2 depend on this).
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)

        device = loaded.device
        text_mask = text_mask.to(device).unsqueeze(-1)  # (batch, seq, 1)
        pooled: dict[int, np.ndarray] = {}

        def pool(layer: int, hidden: torch.Tensor) -> None:  # hidden: (batch, seq, dim)
            if self.config.pooling == "last":
                vectors = hidden[:, -1]  # left padding puts every row's last token here
            else:
                vectors = (hidden.float() * text_mask).sum(1) / text_mask.sum(1).clamp(min=1)
            pooled[layer] = vectors.float().cpu().numpy()

        state.on_readout = pool
        state.placeholder_positions = placeholder.to(device)
        try:
            output = loaded.model(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                position_ids=position_ids.to(device),
                use_cache=False,
            )
            pool(self._num_layers, output.last_hidden_state)  # after the final norm
        except ReadoutReached:
            pass
        finally:
            state.placeholder_positions = None
        return pooled


def _check_texts(texts: Any) -> list[str]:
    from collections.abc import Mapping  # local: this helper is the only user

    if texts is None:
        raise TypeError("texts is None; pass a string or a list of strings")
    if isinstance(texts, str):
        return _check_unicode([texts])
    if isinstance(texts, (bytes, bytearray, memoryview, Mapping)):
        raise TypeError(
            f"texts must be a string or a list of strings, not {type(texts).__name__}; "
            + (
                "decode bytes first, e.g. data.decode('utf-8')"
                if not isinstance(texts, Mapping)
                else "pass list(d.values()) to embed a mapping's values"
            )
        )
    if not isinstance(texts, (list, tuple)):
        try:
            texts = list(texts)  # generators, numpy arrays of str, pandas Series
        except TypeError:
            raise TypeError(
                f"texts must be a string or a list of strings, not {type(texts).__name__}"
            ) from None
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"texts[{index}] is {type(text).__name__}, not str; every item must be a string"
            )
    return _check_unicode(list(texts))


def _check_unicode(texts: list[str]) -> list[str]:
    """Refuse lone surrogates (not encodable text), naming the text and the character."""
    import re

    for index, text in enumerate(texts):
        found = re.search(r"[\ud800-\udfff]", text)
        if found:
            raise ValueError(
                f"texts[{index}] holds a lone surrogate {found.group()!r} at character "
                f"{found.start()}, which is not valid Unicode text; decode the source with "
                "errors='replace' or remove it"
            )
    return texts
