"""What a DSA layer's indexer selects: the sink token's share of the selected slots and how spread out the
selections are over positions.

For the counted queries (after the sink position; registers never count), with J_t the number of real
keys query t selected:

- ``sink_slot_share``: sum_t [sink in sel(t)] / sum_t J_t, the share of the top-k budget spent on the sink;
- ``sink_selection_rate``: the share of queries whose selection holds the sink;
- ``selection_frequency``: per key position s (registers included), the share of the queries that could
  select s (t >= s) and did;
- ``selection_entropy``: entropy (nats) of the positions' share of all selected slots; log(T) would be
  every position chosen equally often.
"""

from __future__ import annotations

import math

import torch

from .attention import selected_keys


@torch.no_grad()
def selection_stats(selection: torch.Tensor, sink_pos: torch.Tensor, num_registers: int = 0) -> dict:
    """selection (B, T, J) key positions per query (registers included); sink_pos (B,) in the same coordinates."""
    B, T, _ = selection.shape
    dev = selection.device
    q_pos = torch.arange(T, device=dev)
    chosen = selected_keys(selection, q_pos, T)  # B, T, T
    counted = (q_pos[None, :] > sink_pos.to(dev)[:, None]) & (q_pos[None, :] >= num_registers)  # B, T
    chosen = chosen & counted[..., None]
    slots = chosen.sum((0, 1)).double()  # per key position
    has_sink = chosen[torch.arange(B, device=dev), :, sink_pos.to(dev)]  # B, T
    could = (counted[..., None] & (q_pos[None, None, :] <= q_pos[None, :, None])).sum((0, 1)).double()
    share = slots / slots.sum()
    entropy = -float((share[share > 0] * share[share > 0].log()).sum())
    return {"sink_slot_share": float(has_sink.sum() / slots.sum()),
            "sink_selection_rate": float(has_sink.sum() / counted.sum()),
            "selection_frequency": torch.where(could > 0, slots / could.clamp_min(1), torch.nan).tolist(),
            "selection_entropy": entropy, "selection_entropy_uniform": math.log(T)}
