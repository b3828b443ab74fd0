"""The Token Prepending mechanism, as forward pre-hooks on a model's own decoder layers.

Before each decoder layer ``i`` with ``tp_start <= i < tp_stop``, the hidden state at the
placeholder ``<PST>`` is overwritten with the hidden state of the prompt's last token, so the
tokens after the placeholder can attend to a summary of the whole sentence despite causal
attention (Fu et al., ACL 2025). The readout hook stops the forward pass at ``output_layer``:
later layers and the LM head never run.

Batches are left-padded, so the last token of every row sits at position ``-1``.
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


@dataclass
class BatchState:
    """Per-batch data the hooks share with the encoder."""

    on_readout: Callable[[int, torch.Tensor], None]
    """Called with ``(hidden_states index, hidden states)`` at each readout layer."""
    placeholder_positions: torch.Tensor | None = None
    """(batch,) long, on the model's device: where ``<PST>`` sits in each row."""


def _hidden_states(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def tp_hooks(
    layers: Sequence[nn.Module],
    state: BatchState,
    *,
    tp_layers: range,
    readout_layers: Sequence[int],
) -> Iterator[None]:
    """Install the TP and readout hooks on ``layers`` for the duration of the block.

    ``tp_layers`` are the 0-based indices of the layers TP runs before (empty for TP off).
    ``readout_layers`` are ``hidden_states`` indices (``0 <= i <= len(layers)``): the input of
    layer ``i`` is passed to ``state.on_readout(i, hidden)``, and the hook of the deepest one
    raises ``ReadoutReached`` so no later layer runs. Index ``len(layers)`` is the model's own
    output, after its final norm; the caller reads it from the forward's result. The hooks are
    removed when the block ends, also on error.
    """
    deepest = max(readout_layers)

    def overwrite_placeholder(
        module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        hidden = _hidden_states(args, kwargs)  # (batch, seq, dim)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        hidden[rows, state.placeholder_positions] = hidden[:, -1].clone()

    def reader(index: int) -> Callable[..., None]:
        def read_out(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            # Registered before any TP hook of the same layer: the readout is hidden_states[i].
            # (The overwrite would touch only the placeholder, which no pooling reads anyway.)
            state.on_readout(index, _hidden_states(args, kwargs))
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
        for index in tp_layers:
            if index < deepest:  # layers past the deepest readout never run
                handles.append(
                    layers[index].register_forward_pre_hook(overwrite_placeholder, with_kwargs=True)
                )
        yield
    finally:
        for handle in handles:
            handle.remove()
