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
from tp_rag.presets import default_settings, read_preset_file
from tp_rag.prompts import PLACEHOLDER, RenderedPrompt, clean_sentence, render, resolve_prompt
from tp_rag.tp import BatchState, ReadoutReached, tp_hooks
from tp_rag.vectors import unit_rows

logger = logging.getLogger(__name__)

_PROGRESS_MIN_BATCHES = 8  # shorter jobs get no progress bar unless asked
_TOKENIZE_CHUNK = 1024  # prompts per tokenizer call


@dataclass
class PromptFeatures:
    """One tokenized prompt, cut to ``max_length``, as the model will see it."""

    input_ids: np.ndarray
    """(seq,) int64 token ids."""
    text_mask: np.ndarray
    """(seq,) bool: the tokens that overlap the text (what ``pooling="mean"`` averages)."""
    placeholder_index: int
    """Position of ``<PST>`` in ``input_ids``; -1 when TP is off."""
    truncated: bool
    """Whether text tokens were dropped to fit ``max_length``."""


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
        ).resolved(loading.num_decoder_layers(hf_config))
        device = loading.resolve_device(config.device)
        loaded = loading.load_model(
            name,
            config=hf_config,
            device=device,
            dtype=loading.choose_dtype(config.dtype, device)[0],
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
        """Width of the vectors: of the hidden states read out at ``output_layer`` (which can
        differ from the input embeddings', e.g. OPT-350m: 512 in and out, 1024 inside)."""
        assert self.config.output_layer is not None  # resolved in __init__
        return self._width(self.config.output_layer)

    @property
    def dtype(self) -> str:
        """The number format the model computes in: ``"float32"``, ``"bfloat16"`` or
        ``"float16"``, which ``config.dtype="auto"`` resolves to on this machine (vectors are
        float32 either way; ``dtype_reason`` says why this one).

        >>> TPEncoder.from_pretrained(path, device="cpu").dtype  # doctest: +SKIP
        'bfloat16'
        """
        return str(self._loaded.dtype).removeprefix("torch.")

    @property
    def dtype_reason(self) -> str:
        """Why ``dtype`` is what it is, e.g. ``"auto: this CPU computes bfloat16 natively
        (avx512_bf16)"`` (see ``loading.choose_dtype``)."""
        return loading.choose_dtype(self.config.dtype, self._loaded.device)[1]

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
            f"device={str(self._loaded.device)!r}, dtype={self.dtype!r}, "
            f"dtype_reason={self.dtype_reason!r})"
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
        if not items:
            self._check_max_length(templates)
            return {
                layer: np.zeros((0, self._width(index)), dtype=np.float32)
                for layer, index in readout.items()
            }
        self._check_max_length(templates)
        features = self._prompt_features(items, tp=use_tp, templates=templates)
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

    def tokenize(
        self,
        texts: str | Sequence[str],
        *,
        tp: bool | None = None,
        prompt: str | None = None,
    ) -> list[PromptFeatures]:
        """The model inputs for ``texts``: each text cleaned up, put into each template, and
        tokenized (one tokenizer call per 1,024 prompts), with only the text cut to fit
        ``max_length``. Text-major order: a text's prompts (8 for MetaEOL) are adjacent.

        This is the whole of ``encode`` outside the forward pass (benchmarks time it alone).

        >>> enc.tokenize("A man plays a guitar.")[0].input_ids  # doctest: +SKIP
        array([    1,   910, 10541,   584, 32000,   376, ...])
        """
        items = _check_texts(texts)
        use_tp = self.config.tp if tp is None else bool(tp)
        templates = resolve_prompt(prompt) if prompt is not None else self.config.templates
        self._check_max_length(templates)
        return self._prompt_features(items, tp=use_tp, templates=templates)

    def encode_tokenized(
        self,
        features: Sequence[PromptFeatures],
        *,
        tp: bool | None = None,
        normalize: bool | None = None,
    ) -> np.ndarray:
        """The rest of ``encode`` for prompts made by ``tokenize`` (with this encoder's prompt
        and the same ``tp``): one ``(n_texts, d)`` float32 row per text, its prompts averaged,
        L2-normalised if ``normalize`` (default: the config's). A server tokenizes the texts of
        many requests apart and runs them here as one length-sorted, token-budget job.

        >>> enc.encode_tokenized(enc.tokenize(["a", "b"])).shape  # doctest: +SKIP
        (2, 896)
        """
        layer = self.config.output_layer
        assert layer is not None  # resolved in __init__
        if not features:
            return np.zeros((0, self._width(layer)), dtype=np.float32)
        use_tp = self.config.tp if tp is None else bool(tp)
        vectors = self._run(
            list(features),
            readout_layers=[hidden_states_index(layer, self._num_layers)],
            tp=use_tp,
            batch_size=self.config.batch_size,
            show_progress=False,
        )[hidden_states_index(layer, self._num_layers)]
        per_text = len(self.config.templates)
        if per_text > 1:  # MetaEOL: average the vectors of the prompts
            vectors = vectors.reshape(-1, per_text, vectors.shape[1]).mean(axis=1)
        if self.config.normalize if normalize is None else normalize:
            vectors = unit_rows(vectors)
        return vectors

    def _prompt_features(
        self, items: list[str], *, tp: bool, templates: tuple[str, ...]
    ) -> list[PromptFeatures]:
        """``tokenize`` for texts already checked: clean up, render, tokenize."""
        if self.config.cleans_text:
            items = [clean_sentence(t) for t in items]
        prompts = [render(template, text, tp=tp) for text in items for template in templates]
        return self._tokenize_prompts(prompts)

    def _check_max_length(self, templates: tuple[str, ...]) -> None:
        if templates in self._fitting_templates:
            return
        for template in templates:
            for tp in (True, False):
                prompts = [render(template, "", tp=tp)]
                length = len(self._tokenize_prompts(prompts, truncate=False)[0].input_ids)
                if length >= self.config.max_length:
                    raise ValueError(
                        f"max_length={self.config.max_length} leaves no room for text: the "
                        f"prompt template alone is {length} tokens; use max_length >= "
                        f"{length + 16}"
                    )
        self._fitting_templates.add(templates)

    def _tokenize_prompts(
        self, prompts: list[RenderedPrompt], *, truncate: bool = True
    ) -> list[PromptFeatures]:
        """Tokenize whole prompt strings (so ids equal the tokenizer's own), then cut only text.

        Which tokens belong to the text, and which is ``<PST>``, comes from character offsets.
        A SentencePiece token's span starts at its ``▁``, so ``▁<PST>`` (Llama-2) spans the
        space before the placeholder: ``<PST>`` is the placeholder-id token whose span holds
        the placeholder's first character.
        """
        features = []
        for start in range(0, len(prompts), _TOKENIZE_CHUNK):
            chunk = prompts[start : start + _TOKENIZE_CHUNK]
            encoding = self.tokenizer([p.text for p in chunk], return_offsets_mapping=True)
            for prompt, ids, offsets in zip(
                chunk, encoding["input_ids"], encoding["offset_mapping"], strict=True
            ):
                spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
                features.append(
                    self._features(prompt, np.asarray(ids, dtype=np.int64), spans, truncate)
                )
        return features

    def _features(
        self, prompt: RenderedPrompt, ids: np.ndarray, spans: np.ndarray, truncate: bool
    ) -> PromptFeatures:
        starts, ends = spans[:, 0], spans[:, 1]  # (seq,) character offsets into prompt.text
        text_start, text_end = prompt.text_span
        overlaps = (starts < text_end) & (ends > text_start)
        excess = len(ids) - self.config.max_length if truncate else 0
        if excess > 0:  # drop the text's last tokens (those wholly inside it), keep the template
            inside = (starts >= text_start) & (ends <= text_end) & (ends > starts)
            keep = ~(inside & (np.cumsum(inside) > inside.sum() - excess))
            ids, starts, ends, overlaps = ids[keep], starts[keep], ends[keep], overlaps[keep]

        placeholder_index = -1
        if prompt.placeholder_start is not None:
            at = prompt.placeholder_start
            matches = np.flatnonzero(
                (ids == self._loaded.placeholder_id) & (starts <= at) & (ends > at)
            )
            if len(matches) != 1:
                raise RuntimeError(
                    f"the tokenizer did not keep {PLACEHOLDER} as one "
                    f"token in {prompt.text!r}; please report this with the model name"
                )
            placeholder_index = int(matches[0])
        return PromptFeatures(ids, overlaps, placeholder_index, truncated=excess > 0)

    def _width(self, index: int) -> int:
        """Vector width at ``hidden_states`` index ``index`` (one tiny forward pass, cached)."""
        index = hidden_states_index(index, self._num_layers)
        widths = self._loaded.widths
        if index not in widths:
            prompts = [render(self.config.templates[0], "", tp=False)]
            features = self._tokenize_prompts(prompts, truncate=False)
            self._run(features, readout_layers=[index], tp=False, batch_size=1, show_progress=False)
        return widths[index]

    @torch.inference_mode()
    def _run(
        self,
        features: list[PromptFeatures],
        *,
        readout_layers: list[int],
        tp: bool,
        batch_size: int,
        show_progress: bool | None,
    ) -> dict[int, np.ndarray]:
        """Forward the prompts in length-sorted batches; pooled vectors per layer, input order."""
        loaded = self._loaded
        max_tokens = self.config.batch_token_budget(loaded.device.type)
        batches = token_budget_batches(
            [len(f.input_ids) for f in features], max_texts=batch_size, max_tokens=max_tokens
        )
        if show_progress is None:
            show_progress = len(batches) >= _PROGRESS_MIN_BATCHES
        out: dict[int, np.ndarray] = {}
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
                    if layer not in out:
                        loaded.widths[layer] = vectors.shape[1]
                        out[layer] = np.empty((len(features), vectors.shape[1]), np.float32)
                    out[layer][batch] = vectors
        return out

    def _forward(self, batch: list[PromptFeatures], state: BatchState) -> dict[int, np.ndarray]:
        """One left-padded batch through the model up to the deepest readout layer, pooled."""
        loaded = self._loaded
        width = max(len(f.input_ids) for f in batch)
        pad_id = loaded.tokenizer.pad_token_id or 0
        input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(batch), width), dtype=np.int64)
        text_mask = np.zeros((len(batch), width), dtype=bool)
        placeholder = np.zeros(len(batch), dtype=np.int64)
        for row, f in enumerate(batch):
            pad = width - len(f.input_ids)
            input_ids[row, pad:] = f.input_ids
            attention_mask[row, pad:] = 1
            text_mask[row, pad:] = f.text_mask
            placeholder[row] = pad + f.placeholder_index
        input_ids, attention_mask, text_mask, placeholder = map(
            torch.from_numpy, (input_ids, attention_mask, text_mask, placeholder)
        )
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


def token_budget_batches(
    lengths: Sequence[int], *, max_texts: int, max_tokens: int
) -> list[list[int]]:
    """Group prompts (given by their lengths in tokens) into batches, longest first, each of at
    most ``max_texts`` prompts and ``max_tokens`` tokens counting padding (rows x the longest).

    Short prompts fill big batches; long ones make small batches, so the memory of a batch is
    bounded whatever the lengths. A prompt longer than ``max_tokens`` goes alone.

    >>> token_budget_batches([10, 300, 12, 290], max_texts=32, max_tokens=600)
    [[1, 3], [2, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable for equal lengths
    batches: list[list[int]] = []
    for i in order:
        batch = batches[-1] if batches else None
        # Sorted longest first: a batch is as wide as its first prompt.
        if batch and len(batch) < max_texts and (len(batch) + 1) * lengths[batch[0]] <= max_tokens:
            batch.append(i)
        else:
            batches.append([i])
    return batches


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
