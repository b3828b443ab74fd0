"""The Token Prepending mechanism, as forward pre-hooks on a model's own decoder layers.

Before each decoder layer ``i`` with ``tp_start <= i < tp_stop``, the hidden state at each
placeholder is overwritten with the hidden state of its source token, so the tokens after a
placeholder can attend to a summary of text they cannot see under causal attention. TP (Fu et
al., ACL 2025) has one pair per prompt: ``<PST>`` <- the prompt's last token. HTP (Ding et
al., 2025) has two per sentence: the sentence's ``<PST>`` and one ``<B-PST>`` at the start of
the text <- the sentence's last token. The readout hook stops the forward pass at
``output_layer``: later layers and the LM head never run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class ReadoutReached(Exception):
    """Raised by the last readout hook to end the forward pass early."""


@dataclass(frozen=True)
class Overwrites:
    """The (placeholder, source) pairs of one batch, flattened over its rows.

    Three equal-length long tensors on the model's device: pair ``j`` copies the hidden state
    at ``(rows[j], sources[j])`` to ``(rows[j], placeholders[j])``.
    """

    rows: torch.Tensor
    placeholders: torch.Tensor
    sources: torch.Tensor


def _hidden_states(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def tp_hooks(
    layers: Sequence[nn.Module],
    overwrites: Overwrites | None,
    on_readout: Callable[[int, torch.Tensor], None],
    *,
    tp_layers: range,
    readout_layers: Sequence[int],
) -> Iterator[None]:
    """Install the TP and readout hooks on ``layers`` for the duration of the block (one batch).

    ``tp_layers`` are the 0-based indices of the layers the overwrites run before (none when
    ``overwrites`` is ``None``: TP off, or no placeholder in the batch). ``readout_layers`` are
    ``hidden_states`` indices (``0 <= i <= len(layers)``): the input of layer ``i`` is passed
    to ``on_readout(i, hidden)``, and the hook of the deepest one raises ``ReadoutReached`` so
    no later layer runs. Index ``len(layers)`` is the model's own output, after its final norm;
    the caller reads it from the forward's result. The hooks are removed when the block ends,
    also on error.
    """
    deepest = max(readout_layers)

    def overwrite(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        assert overwrites is not None
        hidden = _hidden_states(args, kwargs)  # (batch, seq, dim)
        # The gather copies every source before the scatter writes any placeholder.
        sources = hidden[overwrites.rows, overwrites.sources]  # (pairs, dim)
        hidden[overwrites.rows, overwrites.placeholders] = sources

    def reader(index: int) -> Callable[..., None]:
        def read_out(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            # Registered before any TP hook of the same layer: the readout is hidden_states[i].
            # (The overwrite would touch only placeholders, which no pooling reads anyway.)
            on_readout(index, _hidden_states(args, kwargs))
            if index == deepest:
                raise ReadoutReached

        return read_out

    handles = []
    try:
        for index in sorted(set(readout_layers)):
            if index < len(layers):
                handles.append(
                    layers[index].register_forward_pre_hook(reader(index), with_kwargs=True)
                )
        if overwrites is not None:
            for index in tp_layers:
                if index < deepest:  # layers past the deepest readout never run
                    handles.append(
                        layers[index].register_forward_pre_hook(overwrite, with_kwargs=True)
                    )
        yield
    finally:
        for handle in handles:
            handle.remove()
