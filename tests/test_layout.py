"""Fused q_proj row layouts: ours, the official code's per-KV-group split, HF Qwen3-Next's interleave."""

import pytest
import torch

from gatedattn.modeling.layout import from_layout, to_layout

H, HK, D, DM = 8, 2, 4, 5


def _official_split(w, per_head):
    """The official code's forward: view the q_proj output per KV group, split queries | gate."""
    x = torch.eye(DM)[None]
    y = x @ w.T  # (1, DM, rows)
    n = H // HK
    y = y.view(1, DM, HK, -1)
    q, g = torch.split(y, [n * D, n * per_head], dim=-1)
    return q.reshape(1, DM, H, D), g.reshape(1, DM, H, per_head)


def _qwen3_next_split(w):
    y = (torch.eye(DM)[None] @ w.T).view(1, DM, H, 2 * D)
    q, g = torch.chunk(y, 2, dim=-1)
    return q, g


@pytest.mark.parametrize("per_head", [D, 1])
def test_official_layout_matches_the_official_split(per_head):
    ours = torch.randn(H * D + H * per_head, DM)
    q_ours = (torch.eye(DM) @ ours[: H * D].T).view(1, DM, H, D)
    g_ours = (torch.eye(DM) @ ours[H * D:].T).view(1, DM, H, per_head)
    q, g = _official_split(to_layout(ours, "official", H, HK, D, per_head), per_head)
    assert torch.equal(q, q_ours) and torch.equal(g, g_ours)
    assert torch.equal(from_layout(to_layout(ours, "official", H, HK, D, per_head), "official", H, HK, D,
                                   per_head), ours)


def test_qwen3_next_layout_matches_its_chunk():
    ours = torch.randn(2 * H * D, DM)
    q, g = _qwen3_next_split(to_layout(ours, "qwen3_next", H, HK, D, D))
    assert torch.equal(q, (torch.eye(DM) @ ours[: H * D].T).view(1, DM, H, D))
    assert torch.equal(g, (torch.eye(DM) @ ours[H * D:].T).view(1, DM, H, D))
    bias = torch.randn(2 * H * D)
    assert torch.equal(from_layout(to_layout(bias, "qwen3_next", H, HK, D, D), "qwen3_next", H, HK, D, D), bias)
    with pytest.raises(ValueError):
        to_layout(torch.randn(H * D + H, DM), "qwen3_next", H, HK, D, 1)
