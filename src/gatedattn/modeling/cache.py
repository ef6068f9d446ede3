"""KV cache for incremental decoding: post-RoPE (and post-gate, for g2/g3) keys and values per attention
layer; per Gated DeltaNet layer its convolution's last inputs and its recurrent state (fixed size).

Storage is allocated at ``capacity`` positions (``generate`` passes its final length, so nothing is ever
reallocated while decoding) and grows by doubling beyond that, so appending one token is a copy into
preallocated memory rather than a concatenation of the whole history.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, rope_seq_len: int | None = None, capacity: int = 16):
        # Dynamic NTK RoPE: the sequence length (positions, register tokens included) its frequencies are
        # fixed for, so cached keys and later queries share one rotation. None: the first call's length.
        self.rope_seq_len = rope_seq_len
        self._k: list[torch.Tensor | None] = [None] * num_layers
        self._v: list[torch.Tensor | None] = [None] * num_layers
        self._conv: list[torch.Tensor | None] = [None] * num_layers
        self._state: list[torch.Tensor | None] = [None] * num_layers
        self._len = [0] * num_layers
        self.capacity = capacity  # positions allocated at the first update (generate: its final length)

    @property
    def length(self) -> int:
        """Number of positions already cached (same for every layer between forward calls)."""
        return self._len[0]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v of shape (B, T, kv_heads, head_dim); return the whole cached history."""
        start, end = self._len[layer], self._len[layer] + k.shape[1]
        buf_k, buf_v = self._k[layer], self._v[layer]
        if buf_k is None or end > buf_k.shape[1]:
            cap = max(end, 2 * (buf_k.shape[1] if buf_k is not None else 0), self.capacity)
            new_k = k.new_empty(k.shape[0], cap, *k.shape[2:])
            new_v = v.new_empty(v.shape[0], cap, *v.shape[2:])
            if buf_k is not None:
                new_k[:, :start] = buf_k[:, :start]
                new_v[:, :start] = buf_v[:, :start]
            self._k[layer], self._v[layer] = buf_k, buf_v = new_k, new_v
        buf_k[:, start:end] = k
        buf_v[:, start:end] = v
        self._len[layer] = end
        return buf_k[:, :end], buf_v[:, :end]

    def linear_state(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """A Gated DeltaNet layer's (conv inputs (B, channels, kernel - 1), state (B, Hv, Dk, Dv)); Nones at
        the start."""
        return self._conv[layer], self._state[layer]

    def update_linear_state(self, layer: int, conv: torch.Tensor, state: torch.Tensor, num_tokens: int) -> None:
        self._conv[layer], self._state[layer] = conv, state
        self._len[layer] += num_tokens
