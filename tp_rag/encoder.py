"""``TPEncoder``: embeddings from a decoder-only LLM with Token Prepending (sentences, ``tp``)
or hierarchical Token Prepending (passages, ``htp``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from tqdm.auto import tqdm

from tp_rag import loading
from tp_rag.config import DEFAULT_MODEL, FORWARD_PASS_TOKENS, TPConfig, hidden_states_index
from tp_rag.presets import default_settings, read_preset_file
from tp_rag.prompts import (
    PLACEHOLDER,
    RenderedPrompt,
    clean_sentence,
    render,
    render_passage,
    resolve_prompt,
)
from tp_rag.tp import Overwrites, ReadoutReached, tp_hooks
from tp_rag.vectors import unit_rows

logger = logging.getLogger(__name__)

_TOKENIZE_CHUNK = 1024  # prompts per tokenizer call


@dataclass
class PromptFeatures:
    """One tokenized prompt, cut to ``max_length``, as the model will see it.

    Before each TP layer the hidden state at ``placeholders[j]`` is overwritten with the one at
    ``sources[j]``. TP: one pair, ``<PST>`` <- the last token. HTP with ``n`` sentences:
    ``placeholders`` holds the ``<PST>`` of sentences 0..n-1, then the ``<B-PST>`` 0..n-1;
    ``sources`` holds each sentence's last token (the last sentence's: the first token after the
    text), twice. TP off: no pairs.
    """

    input_ids: np.ndarray
    """(seq,) int64 token ids."""
    text_mask: np.ndarray
    """(seq,) bool: the text's own tokens, no placeholder (what ``pooling="mean"`` averages)."""
    placeholders: np.ndarray
    """(pairs,) int64 positions in ``input_ids`` that are overwritten."""
    sources: np.ndarray
    """(pairs,) int64 positions whose hidden state each placeholder receives."""
    truncated: bool
    """Whether text tokens were dropped to fit ``max_length``."""

    @property
    def placeholder_index(self) -> int:
        """Position of the first placeholder (TP's ``<PST>``); -1 when there is none."""
        return int(self.placeholders[0]) if len(self.placeholders) else -1


_NO_PAIRS = np.zeros(0, dtype=np.int64)


class TPEncoder:
    """Embeddings with Token Prepending over a Hugging Face decoder-only LLM: ``method="tp"``
    for sentences, ``method="htp"`` (hierarchical, one placeholder per sentence) for passages.

    >>> enc = TPEncoder.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")  # doctest: +SKIP
    >>> enc.encode(["A man plays a guitar.", "Is it raining?"]).shape  # doctest: +SKIP
    (2, 896)
    >>> htp = TPEncoder.from_pretrained(method="htp")  # doctest: +SKIP
    >>> htp.encode("What causes lift?", query=True).shape  # doctest: +SKIP
    (896,)
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
        if config.method == "htp":
            from tp_rag.sentences import splitter_id

            splitter_id()  # the splitter is installed (else an ImportError naming the extra)
        self._check_max_length(config.templates)
        if config.query_prompt is not None:
            self._check_max_length(config.query_templates)

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
        in ``tp_rag.presets`` (each method has its own). ``model_kwargs`` go to
        ``AutoModel.from_pretrained``.

        >>> enc = TPEncoder.from_pretrained("/models/llama-2-7b", tp_stop=7)  # doctest: +SKIP
        >>> htp = TPEncoder.from_pretrained("/models/mistral-7b", method="htp")  # doctest: +SKIP
        """
        TPConfig.check_keys(settings, "TPEncoder.from_pretrained()")
        name = str(model_name_or_path) if model_name_or_path else DEFAULT_MODEL
        from_file: dict[str, Any] = {}
        if preset is not None:
            from_file = read_preset_file(preset)
            TPConfig.check_keys(from_file, f"preset file {str(preset)!r}")
            from_file.pop("model", None)
        # Validate the caller's own settings before touching the network or the disk.
        given = TPConfig(**{**from_file, **settings})
        if given.method == "htp":
            from tp_rag.sentences import splitter_id

            splitter_id()
        hf_config = loading.load_config(
            name, revision=revision, trust_remote_code=trust_remote_code
        )
        defaults = default_settings(hf_config, given.method)
        config = TPConfig(**{**defaults, **from_file, **settings, "model": name}).resolved(
            loading.num_decoder_layers(hf_config)
        )
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
    def device(self) -> str:
        """The device the model runs on (``config.device="auto"`` resolved), e.g. ``"cpu"``."""
        return str(self._loaded.device)

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
        """The model's tokenizer, with ``<PST>`` and ``<B-PST>`` added."""
        return self._loaded.tokenizer

    @property
    def placeholder_embedding(self) -> torch.Tensor:
        """The ``<PST>`` row of the input embedding table (1-D)."""
        weight = self._loaded.model.get_input_embeddings().weight
        return weight[self._loaded.placeholder_id].detach()

    def __repr__(self) -> str:
        c = self.config
        return (
            f"TPEncoder(model={c.model!r}, method={c.method!r}, prompt={c.prompt!r}, tp={c.tp}, "
            f"tp_start={c.tp_start}, "
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
        if changes.get("method", self.config.method) != self.config.method:
            raise ValueError(
                "method selects the prompts and layer defaults; load an encoder for it with "
                f"TPEncoder.from_pretrained(model, method={changes['method']!r}) (the weights "
                "already loaded are reused)"
            )
        config = self.config.replace(**changes).resolved(self._num_layers)
        return TPEncoder(self._loaded, config, self.load_kwargs)

    @overload
    def encode(
        self,
        texts: str,
        *,
        tp: bool | None = ...,
        query: bool = ...,
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
        query: bool = ...,
        prompt: str | None = ...,
        batch_size: int | None = ...,
        show_progress: bool | None = ...,
    ) -> np.ndarray: ...
    def encode(
        self,
        texts: str | Sequence[str],
        *,
        tp: bool | None = None,
        query: bool = False,
        prompt: str | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Embed one text (gives shape ``(d,)``) or a list of texts (gives ``(n, d)``), float32.

        ``query=True`` embeds search queries with the config's ``query_prompt`` (HTP's default
        ``htp-query``; for TP, the document prompt unless one is set). ``tp``, ``prompt`` and
        ``batch_size`` override the config for this call (``tp=False`` is the same prompt
        without any placeholder, on the same loaded weights). ``show_progress=None`` shows a
        "Batches" bar when this module's logger is at INFO or DEBUG, as sentence-transformers.

        >>> enc.encode("one text").shape  # doctest: +SKIP
        (896,)
        >>> enc.encode(["what is lift?"], query=True).shape  # doctest: +SKIP
        (1, 896)
        """
        layer = self.config.output_layer
        assert layer is not None  # resolved in __init__
        return self.encode_layers(
            texts,
            [layer],
            tp=tp,
            query=query,
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
        query: bool = False,
        prompt: str | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[int, np.ndarray]:
        """Embed texts read out at several layers in one forward pass per text.

        ``layers`` are ``hidden_states`` indices (as ``output_layer``); the result maps each to
        the vectors ``encode`` would give with that ``output_layer``. Used by ``tp-rag tune``.
        ``progress(n)`` is called after each batch with the number of texts it completed.

        >>> enc.encode_layers(["a", "b"], [10, 20, -1])[20].shape  # doctest: +SKIP
        (2, 896)
        """
        readout = {layer: hidden_states_index(layer, self._num_layers) for layer in layers}
        items, templates, features = self._prepare(texts, tp=tp, query=query, prompt=prompt)
        if not items:
            return {
                layer: np.zeros((0, self._width(index)), dtype=np.float32)
                for layer, index in readout.items()
            }
        per_text = len(templates)
        truncated = sum(
            any(f.truncated for f in features[i : i + per_text])
            for i in range(0, len(features), per_text)
        )
        if truncated:
            logger.warning(
                "%d of %d texts did not fit into max_length=%d tokens and were cut "
                "(the prompt template and placeholders were kept).",
                truncated,
                len(items),
                self.config.max_length,
            )
        done = {"prompts": 0, "texts": 0}

        def on_batch(prompts: int) -> None:  # a text is done once all its prompts are
            done["prompts"] += prompts
            texts_done = done["prompts"] // per_text
            if progress is not None and texts_done > done["texts"]:
                progress(texts_done - done["texts"])
            done["texts"] = texts_done

        pooled = self._run(
            features,
            readout_layers=sorted(set(readout.values())),
            batch_size=batch_size or self.config.batch_size,
            show_progress=show_progress,
            on_batch=on_batch,
        )
        result = {}
        for layer, index in readout.items():
            vectors = self._finish(pooled[index], len(templates), None)
            result[layer] = vectors[0] if isinstance(texts, str) else vectors
        return result

    def tokenize(
        self,
        texts: str | Sequence[str],
        *,
        tp: bool | None = None,
        query: bool = False,
        prompt: str | None = None,
    ) -> list[PromptFeatures]:
        """The model inputs for ``texts``: each text cleaned up (TP's built-in prompts), split
        into sentences (HTP), put into each template, and tokenized (one tokenizer call per
        1,024 prompts), with only the text cut to fit ``max_length``. Text-major order: a
        text's prompts (8 for MetaEOL) are adjacent.

        This is the whole of ``encode`` outside the forward pass (benchmarks time it alone).

        >>> enc.tokenize("A man plays a guitar.")[0].input_ids  # doctest: +SKIP
        array([    1,   910, 10541,   584, 32000,   376, ...])
        """
        return self._prepare(texts, tp=tp, query=query, prompt=prompt)[2]

    @torch.inference_mode()
    def encode_tokenized(
        self,
        features: Sequence[PromptFeatures],
        *,
        query: bool = False,
        normalize: bool | None = None,
    ) -> np.ndarray:
        """The rest of ``encode`` for prompts made by ``tokenize`` (with this encoder's prompts
        and the same ``query``): one ``(n_texts, d)`` float32 row per text, its prompts
        averaged, L2-normalised if ``normalize`` (default: the config's). A server tokenizes the
        texts of many requests apart and runs them here as one length-sorted, token-budget job.

        >>> enc.encode_tokenized(enc.tokenize(["a", "b"])).shape  # doctest: +SKIP
        (2, 896)
        """
        assert self.config.output_layer is not None  # resolved in __init__
        layer = hidden_states_index(self.config.output_layer, self._num_layers)
        if not features:
            return np.zeros((0, self._width(layer)), dtype=np.float32)
        vectors = self._run(
            list(features),
            readout_layers=[layer],
            batch_size=self.config.batch_size,
            show_progress=False,
        )[layer]
        templates = self.config.templates_for(query=query)
        return self._finish(vectors, len(templates), normalize)

    def _finish(self, vectors: np.ndarray, per_text: int, normalize: bool | None) -> np.ndarray:
        """Pooled prompt vectors into text vectors: a text's prompts averaged (MetaEOL's 8),
        then L2-normalised if ``normalize`` (``None``: the config's)."""
        if per_text > 1:
            vectors = vectors.reshape(-1, per_text, vectors.shape[1]).mean(axis=1)
        if self.config.normalize if normalize is None else normalize:
            vectors = unit_rows(vectors)
        return vectors

    def _prepare(
        self, texts: Any, *, tp: bool | None, query: bool, prompt: str | None
    ) -> tuple[list[str], tuple[str, ...], list[PromptFeatures]]:
        """Check texts, pick the templates (checked against ``max_length`` once), tokenize."""
        items = _check_texts(texts)
        use_tp = self.config.tp if tp is None else bool(tp)
        if prompt is not None:
            templates = resolve_prompt(prompt, self.config.method)
        else:
            templates = self.config.templates_for(query=query)
        self._check_max_length(templates)
        if self.config.cleans_text:
            items = [clean_sentence(t) for t in items]
        if self.config.method == "htp":
            from tp_rag.sentences import sentence_ends

            ends = [sentence_ends(text) for text in items] if use_tp else [[]] * len(items)
            prompts = [
                render_passage(template, text, text_ends, tp=use_tp)
                for text, text_ends in zip(items, ends, strict=True)
                for template in templates
            ]
        else:
            prompts = [
                render(template, text, tp=use_tp) for text in items for template in templates
            ]
        return items, templates, self._tokenize_prompts(prompts)

    def _check_max_length(self, templates: tuple[str, ...]) -> None:
        """Refuse a ``max_length`` that leaves no room for one text token with its placeholders
        (TP: the template with ``<PST>``; HTP: one sentence's two placeholders and the EOS)."""
        if templates in self._fitting_templates:
            return
        for template in templates:
            if self.config.method == "htp":
                empty = self._tokenize_prompts([render_passage(template, "", [], tp=False)], False)
                length = len(empty[0].input_ids) + 2  # + <B-PST> and <PST> of one sentence
            else:
                length = max(
                    len(self._tokenize_prompts([render(template, "", tp=tp)], False)[0].input_ids)
                    for tp in (True, False)
                )
            if length >= self.config.max_length:
                raise ValueError(
                    f"max_length={self.config.max_length} leaves no room for text: the "
                    f"prompt template alone is {length} tokens; use max_length >= "
                    f"{length + 16}"
                )
        self._fitting_templates.add(templates)

    def _tokenize_prompts(
        self, prompts: list[RenderedPrompt], truncate: bool = True
    ) -> list[PromptFeatures]:
        """Tokenize whole prompt strings (so ids equal the tokenizer's own), then cut only text.

        Which tokens belong to the text, and which are placeholders, comes from character
        offsets. A SentencePiece token's span starts at its ``▁``, so ``▁<PST>`` (Llama-2) spans
        the space before the placeholder: a placeholder is the placeholder-id token whose span
        holds the placeholder's first character. HTP prompts end with the model's EOS token.
        """
        htp = self.config.method == "htp"
        eos = self.tokenizer.eos_token_id
        if htp and eos is None:
            raise ValueError(
                f"model {self.config.model!r} has no EOS token, which closes every HTP prompt; "
                "use method='tp' or a tokenizer with eos_token set"
            )
        features = []
        for start in range(0, len(prompts), _TOKENIZE_CHUNK):
            chunk = prompts[start : start + _TOKENIZE_CHUNK]
            encoding = self.tokenizer([p.text for p in chunk], return_offsets_mapping=True)
            for prompt, ids, offsets in zip(
                chunk, encoding["input_ids"], encoding["offset_mapping"], strict=True
            ):
                ids = np.asarray(ids, dtype=np.int64)
                spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
                if htp:
                    end = len(prompt.text)
                    ids = np.append(ids, eos)
                    spans = np.concatenate([spans, [[end, end]]])
                    features.append(self._passage_features(prompt, ids, spans, truncate))
                else:
                    features.append(self._features(prompt, ids, spans, truncate))
        return features

    def _features(
        self, prompt: RenderedPrompt, ids: np.ndarray, spans: np.ndarray, truncate: bool
    ) -> PromptFeatures:
        """TP: one ``<PST>`` whose source is the prompt's last token."""
        starts, ends = spans[:, 0], spans[:, 1]  # (seq,) character offsets into prompt.text
        text_start, text_end = prompt.text_span
        overlaps = (starts < text_end) & (ends > text_start)
        excess = len(ids) - self.config.max_length if truncate else 0
        if excess > 0:  # drop the text's last tokens (those wholly inside it), keep the template
            inside = (starts >= text_start) & (ends <= text_end) & (ends > starts)
            keep = ~(inside & (np.cumsum(inside) > inside.sum() - excess))
            ids, starts, ends, overlaps = ids[keep], starts[keep], ends[keep], overlaps[keep]
        if prompt.placeholder_start is None:
            return PromptFeatures(ids, overlaps, _NO_PAIRS, _NO_PAIRS, truncated=excess > 0)
        at = prompt.placeholder_start
        matches = np.flatnonzero(
            (ids == self._loaded.placeholder_id) & (starts <= at) & (ends > at)
        )
        if len(matches) != 1:
            raise RuntimeError(
                f"the tokenizer did not keep {PLACEHOLDER} as one "
                f"token in {prompt.text!r}; please report this with the model name"
            )
        placeholder, source = matches[:1], np.array([len(ids) - 1])
        return PromptFeatures(ids, overlaps, placeholder, source, truncated=excess > 0)

    def _passage_features(
        self, prompt: RenderedPrompt, ids: np.ndarray, spans: np.ndarray, truncate: bool
    ) -> PromptFeatures:
        """HTP: the prompt's ids with ``<B-PST>`` x n inserted where the text starts and a
        ``<PST>`` before each sentence's first token. Sentence ``k``'s two placeholders <- its
        last token (the last sentence's: the first token after the text). A cut drops text from
        the end, and a sentence left without text goes with both its placeholders."""
        starts, ends = spans[:, 0], spans[:, 1]  # (seq,) character offsets into prompt.text
        text_start, text_end = prompt.text_span
        text_mask = (starts < text_end) & (ends > text_start)
        # Sentence k is tokens [first[k], first[k + 1]): from the first token with a character
        # at or past its start to the first token after the text (the EOS at the latest). A
        # sentence that shares its only token with the one before joins that one.
        after_text = int(np.flatnonzero(text_mask)[-1]) + 1 if text_mask.any() else len(ids)
        first = np.unique(np.searchsorted(ends, np.array(prompt.sentence_starts), side="right"))
        first = first[first < after_text]
        n = len(first)
        excess = len(ids) + 2 * n - self.config.max_length if truncate else 0
        if n == 0:  # HTP off, or no sentence (a blank text)
            if excess > 0:
                inside = text_mask & (ends > starts)
                keep = ~(inside & (np.cumsum(inside) > inside.sum() - excess))
                ids, text_mask = ids[keep], text_mask[keep]
            return PromptFeatures(ids, text_mask, _NO_PAIRS, _NO_PAIRS, truncated=excess > 0)
        bounds = [*first.tolist(), after_text]
        keep = np.ones(len(ids), dtype=bool)
        kept = n
        while excess > 0:
            last = kept - 1
            count = bounds[last + 1] - bounds[last]
            if count <= excess and last > 0:  # the whole sentence goes, with its placeholders
                keep[bounds[last] : bounds[last + 1]] = False
                excess -= count + 2
                kept -= 1
            else:  # _check_max_length leaves sentence 0 at least one token
                keep[bounds[last + 1] - excess : bounds[last + 1]] = False
                excess = 0
        position = np.cumsum(keep) - 1  # old position -> position among the kept tokens
        at = position[first[:kept]]  # where each kept sentence starts
        ids = np.insert(
            ids[keep],
            [at[0]] * kept + at.tolist(),
            [self._loaded.boundary_id] * kept + [self._loaded.placeholder_id] * kept,
        )
        text_mask = np.insert(text_mask[keep], [at[0]] * kept + at.tolist(), False)
        psts = at + kept + np.arange(kept)  # after the n <B-PST> and the k earlier <PST>
        sources = np.append(psts[1:] - 1, position[after_text] + 2 * kept)
        return PromptFeatures(
            ids,
            text_mask,
            np.concatenate([psts, at[0] + np.arange(kept)]),
            np.concatenate([sources, sources]),
            truncated=not keep.all(),
        )

    def _width(self, index: int) -> int:
        """Vector width at ``hidden_states`` index ``index`` (measured when the model loaded)."""
        return self._loaded.widths[hidden_states_index(index, self._num_layers)]

    @torch.inference_mode()
    def _run(
        self,
        features: list[PromptFeatures],
        *,
        readout_layers: list[int],
        batch_size: int,
        show_progress: bool | None,
        on_batch: Callable[[int], None] | None = None,
    ) -> dict[int, np.ndarray]:
        """Forward the prompts in length-sorted batches; pooled vectors per layer, input order.
        ``on_batch(n)`` follows each batch of ``n`` prompts."""
        loaded = self._loaded
        # Equal-length prompts in one order whatever the call's order (by their ids): which batch
        # a prompt joins, and so its rounding, depends on the set of prompts, not their order.
        canonical = sorted(
            range(len(features)),
            key=lambda i: (-len(features[i].input_ids), features[i].input_ids.tobytes()),
        )
        batches = [
            [canonical[i] for i in batch]
            for batch in token_budget_batches(
                [len(features[i].input_ids) for i in canonical],
                max_texts=batch_size,
                max_tokens=self.config.batch_token_budget(loaded.device.type),
                pass_tokens=FORWARD_PASS_TOKENS.get(loaded.device.type, FORWARD_PASS_TOKENS["cpu"]),
            )
        ]
        if show_progress is None:  # as sentence-transformers: the bar follows the logging level
            show_progress = logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
        out: dict[int, np.ndarray] = {}
        with loaded.lock:
            for batch in tqdm(batches, desc="Batches", disable=not show_progress):
                pooled = self._forward([features[i] for i in batch], readout_layers)
                for layer, vectors in pooled.items():
                    if layer not in out:
                        out[layer] = np.empty((len(features), vectors.shape[1]), np.float32)
                    out[layer][batch] = vectors
                if on_batch is not None:
                    on_batch(len(batch))
        return out

    def _forward(
        self, batch: list[PromptFeatures], readout_layers: list[int]
    ) -> dict[int, np.ndarray]:
        """One left-padded batch through the model up to the deepest readout layer, pooled."""
        loaded = self._loaded
        width = max(len(f.input_ids) for f in batch)
        pad_id = loaded.tokenizer.pad_token_id or 0
        input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(batch), width), dtype=np.int64)
        text_mask = np.zeros((len(batch), width), dtype=bool)
        pads = np.empty(len(batch), dtype=np.int64)
        for row, f in enumerate(batch):
            pad = pads[row] = width - len(f.input_ids)
            input_ids[row, pad:] = f.input_ids
            attention_mask[row, pad:] = 1
            text_mask[row, pad:] = f.text_mask
        counts = [len(f.placeholders) for f in batch]
        pair_rows = np.repeat(np.arange(len(batch)), counts)  # (pairs,)
        pair_pads = pads[pair_rows]
        input_ids, attention_mask, text_mask = map(
            torch.from_numpy, (input_ids, attention_mask, text_mask)
        )
        # Positions count real tokens only, so a left-padded row sees the same positions as
        # when it is alone (absolute-position models such as GPT-2 depend on this).
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)

        device = loaded.device
        overwrites = None
        assert self.config.tp_start is not None and self.config.tp_stop is not None
        if len(pair_rows):
            overwrites = Overwrites(
                rows=torch.from_numpy(pair_rows).to(device),
                placeholders=torch.from_numpy(
                    np.concatenate([f.placeholders for f in batch]) + pair_pads
                ).to(device),
                sources=torch.from_numpy(np.concatenate([f.sources for f in batch]) + pair_pads).to(
                    device
                ),
            )
        text_mask = text_mask.to(device).unsqueeze(-1)  # (batch, seq, 1)
        pooled: dict[int, np.ndarray] = {}

        def pool(layer: int, hidden: torch.Tensor) -> None:  # hidden: (batch, seq, dim)
            if self.config.pooling == "last":
                vectors = hidden[:, -1]  # left padding puts every row's last token here
            else:
                vectors = (hidden.float() * text_mask).sum(1) / text_mask.sum(1).clamp(min=1)
            pooled[layer] = vectors.float().cpu().numpy()

        tp_layers = range(self.config.tp_start, self.config.tp_stop)
        try:
            with tp_hooks(
                loaded.layers,
                overwrites,
                pool,
                tp_layers=tp_layers,
                readout_layers=readout_layers,
            ):
                output = loaded.model(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    position_ids=position_ids.to(device),
                    use_cache=False,
                )
            pool(self._num_layers, output.last_hidden_state)  # after the final norm
        except ReadoutReached:
            pass
        return pooled


def token_budget_batches(
    lengths: Sequence[int], *, max_texts: int, max_tokens: int, pass_tokens: int
) -> list[list[int]]:
    """Group prompts (given by their lengths in tokens) into batches, longest first, each of at
    most ``max_texts`` prompts and ``max_tokens`` tokens counting padding (rows x the longest),
    with the least work: padded tokens plus ``pass_tokens`` for each forward pass.

    Batches are runs of the length-sorted prompts (a prompt longer than ``max_tokens`` goes
    alone); where to cut them is chosen exactly (dynamic programming over the runs), so a batch is
    split where the padding it saves outweighs one more forward pass. A small ``pass_tokens``
    (a CPU, where a pass of a few hundred tokens already runs near the machine's peak) gives
    length-close batches; a large one (a GPU, which needs many rows to be busy) gives few wide
    ones. Ties go to the fewer, larger batches. The search is one small array step per prompt
    (under a second for 100,000 prompts with ``max_texts=1024`` on a 2-core EPYC).

    >>> token_budget_batches([10, 300, 12, 290], max_texts=32, max_tokens=600, pass_tokens=64)
    [[1, 3], [2, 0]]
    >>> token_budget_batches([10, 300, 12, 290], max_texts=32, max_tokens=1200, pass_tokens=64)
    [[1, 3], [2, 0]]
    >>> token_budget_batches([10, 300, 12, 290], max_texts=32, max_tokens=1200, pass_tokens=1000)
    [[1, 3, 2, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable for equal lengths
    ordered = [lengths[i] for i in order]
    rows = np.arange(1, max_texts + 1, dtype=np.int64)
    # work[i]: least work for sorted prompts i.. onwards; stop[i]: the end of the batch at i.
    work = np.zeros(len(order) + 1, dtype=np.int64)
    stop = [0] * len(order)
    for first in range(len(order) - 1, -1, -1):
        width = ordered[first]  # sorted longest first: a batch is as wide as its first prompt
        most = max(1, min(max_texts, len(order) - first, max_tokens // max(width, 1)))
        cost = rows[:most] * width + work[first + 1 : first + 1 + most]
        best = most - 1 - int(np.argmin(cost[::-1]))  # the last least: ties to larger batches
        work[first] = cost[best] + pass_tokens
        stop[first] = first + 1 + best
    batches: list[list[int]] = []
    first = 0
    while first < len(order):
        batches.append(order[first : stop[first]])
        first = stop[first]
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
