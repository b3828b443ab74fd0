"""The Token Prepending mechanism, as forward pre-hooks on a model's own decoder layers.

Before each decoder layer ``i`` with ``tp_start <= i < tp_stop``, the hidden state at the
placeholder ``<PST>`` is overwritten with the hidden state of the prompt's last token, so the
tokens after the placeholder can attend to a summary of the whole sentence despite causal
attention (Fu et al., ACL 2025). The readout hook stops the forward pass at ``output_layer``:
later layers and the LM head never run.

Batches are left-padded, so the last token of every row sits at position ``-1``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class ReadoutReached(Exception):
    """Raised by the readout hook to end the forward pass early; carries the hidden states."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__("readout layer reached")
        self.hidden = hidden


class BatchState:
    """Per-batch data the hooks read: the placeholder's position in each row."""

    placeholder_positions: torch.Tensor | None = None  # (batch,) long, on the model's device


def _hidden_states(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def tp_hooks(
    layers: Sequence[nn.Module],
    state: BatchState,
    *,
    tp_layers: range,
    output_layer: int,
) -> Iterator[None]:
    """Install the TP and readout hooks on ``layers`` for the duration of the block.

    ``tp_layers`` are the 0-based indices of the layers TP runs before (empty for TP off);
    ``output_layer`` is the ``hidden_states`` index read out (``len(layers)`` means the model's
    own final output, after its final norm, so no readout hook is needed). The hooks are removed
    when the block ends, also on error.
    """

    def overwrite_placeholder(
        module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        hidden = _hidden_states(args, kwargs)  # (batch, seq, dim)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        hidden[rows, state.placeholder_positions] = hidden[:, -1].clone()

    def read_out(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # The input of layer i is hidden_states[i]; the overwrite (if TP also runs before this
        # layer) touches only the placeholder, which no pooling reads.
        raise ReadoutReached(_hidden_states(args, kwargs))

    handles = []
    try:
        if output_layer < len(layers):
            handles.append(
                layers[output_layer].register_forward_pre_hook(read_out, with_kwargs=True)
            )
        for index in tp_layers:
            if index < output_layer:  # layers past the readout never run
                handles.append(
                    layers[index].register_forward_pre_hook(overwrite_placeholder, with_kwargs=True)
                )
        yield
    finally:
        for handle in handles:
            handle.remove()
