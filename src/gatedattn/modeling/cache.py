"""KV cache for incremental decoding: post-RoPE (and post-gate, for g2/g3) keys and values per attention
layer, the lightning indexer's keys of DSA layers, and per Gated DeltaNet layer its convolution's last inputs
and its recurrent state (fixed size).

Storage is allocated at ``capacity`` positions (``generate`` passes its final length, so nothing is ever
reallocated while decoding) and grows by doubling beyond that, so appending one token is a copy into
preallocated memory rather than a concatenation of the whole history.

Static decoding (``start_static``, for a compiled decoding step): every later one-token step writes at the
position held in a tensor, ``position``, and attention reads the whole allocated storage under the mask
``static_mask``, so every step has the same shapes and reads no Python-side length; ``advance_static``
moves the position on outside the compiled step.
"""

from __future__ import annotations

import torch

from ..errors import GatedAttnError


class KVCache:
    def __init__(self, num_layers: int, rope_seq_len: int | None = None, capacity: int = 16):
        # Dynamic NTK RoPE: the sequence length (positions, register tokens included) its frequencies are
        # fixed for, so cached keys and later queries share one rotation. None: the first call's length.
        self.rope_seq_len = rope_seq_len
        self._k: list[torch.Tensor | None] = [None] * num_layers
        self._v: list[torch.Tensor | None] = [None] * num_layers
        self._index_k: list[torch.Tensor | None] = [None] * num_layers
        self._conv: list[torch.Tensor | None] = [None] * num_layers
        self._state: list[torch.Tensor | None] = [None] * num_layers
        self._len = [0] * num_layers
        self.capacity = capacity  # positions allocated at the first update (generate: its final length)
        self.position: torch.Tensor | None = None  # static decoding: the (1,) position the next token takes

    @property
    def length(self) -> int:
        """Number of positions already cached (same for every layer between forward calls)."""
        return self._len[0]

    def _append(self, store: list, layer: int, start: int, x: torch.Tensor) -> torch.Tensor:
        """Write x (B, T, ...) at positions start.. of ``store[layer]``, growing it; return positions :end."""
        end, buf = start + x.shape[1], store[layer]
        if buf is None or end > buf.shape[1]:
            cap = max(end, 2 * (buf.shape[1] if buf is not None else 0), self.capacity)
            new = x.new_empty(x.shape[0], cap, *x.shape[2:])
            if buf is not None:
                new[:, :start] = buf[:, :start]
            store[layer] = buf = new
        buf[:, start:end] = x
        return buf[:, :end]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v of shape (B, T, kv_heads, head_dim); return the whole cached history (static
        decoding: the whole storage, to be read under ``static_mask``)."""
        if self.position is not None:
            self._k[layer].index_copy_(1, self.position, k)
            self._v[layer].index_copy_(1, self.position, v)
            return self._k[layer], self._v[layer]
        start = self._len[layer]
        k_all, v_all = self._append(self._k, layer, start, k), self._append(self._v, layer, start, v)
        self._len[layer] = start + k.shape[1]
        return k_all, v_all

    def update_index_keys(self, layer: int, k: torch.Tensor) -> torch.Tensor:
        """Append a DSA layer's indexer keys (B, T, indexer_dim), after ``update`` of the same layer and step;
        return the whole history."""
        return self._append(self._index_k, layer, self._len[layer] - k.shape[1], k)

    def start_static(self) -> None:
        """Switch to static decoding of one token per step, after the prefill; full-attention layers only. The
        storage must already hold every position the decoding will reach (``capacity``)."""
        if any(x is not None for x in self._index_k + self._state):
            raise GatedAttnError("static decoding supports full-attention layers without DSA; this cache holds "
                                 "Gated DeltaNet or indexer state")
        if any(k is None for k in self._k) or len({k.shape[1] for k in self._k}) != 1:
            raise GatedAttnError("static decoding starts after a prefill of every layer")
        for buf in self._k + self._v:  # masked slots still enter the products: no garbage (NaN) in them
            buf[:, self.length:].zero_()
        self.position = torch.tensor([self.length], device=self._k[0].device)

    def static_mask(self) -> torch.Tensor:
        """(1, 1, storage size) boolean: the positions the current static step may attend to."""
        size = self._k[0].shape[1]
        return (torch.arange(size, device=self.position.device) <= self.position)[None, None]

    def advance_static(self) -> None:
        """After a static step: one more position cached (the caller keeps it below the storage's size)."""
        self.position += 1
        self._len = [n + 1 for n in self._len]

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (the storage stays allocated for the next appends)."""
        if length < self.length and any(state is not None for state in self._state):
            raise GatedAttnError("a Gated DeltaNet layer's recurrent state cannot be rewound; truncate a cache of "
                                 "full-attention layers only")
        self._len = [min(n, length) for n in self._len]

    def linear_state(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """A Gated DeltaNet layer's (conv inputs (B, channels, kernel - 1), state (B, Hv, Dk, Dv)); Nones at
        the start."""
        return self._conv[layer], self._state[layer]

    def update_linear_state(self, layer: int, conv: torch.Tensor, state: torch.Tensor, num_tokens: int) -> None:
        self._conv[layer], self._state[layer] = conv, state
        self._len[layer] += num_tokens
