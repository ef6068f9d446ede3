"""Named hook points: identity modules that probes observe with ordinary forward hooks.

The model never imports analysis code; it only passes tensors through these points, so any tool that uses
``register_forward_hook`` (our probes, user code) can read them by module name, e.g.
``layers.3.attn.hook_attn_out``.
"""

from torch import nn


class HookPoint(nn.Module):
    def forward(self, x):
        return x
