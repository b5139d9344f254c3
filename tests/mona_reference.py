"""Test-only reference of the official Mona module and its placement, written from the paper's spec.

Nothing here is used by the library: it is the independent implementation the tests compare to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ReferenceMona(nn.Module):
    """The official Mona, unfused: three depthwise convs averaged plus identity, a 1x1 conv plus identity."""

    def __init__(self, channels: int, inner_dim: int = 64, num_prefix: int = 0, prefix_mode: str = "adapt") -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.gamma = nn.Parameter(torch.full((channels,), 1e-6))
        self.gammax = nn.Parameter(torch.ones(channels))
        self.project1 = nn.Linear(channels, inner_dim)
        self.conv1 = nn.Conv2d(inner_dim, inner_dim, 3, padding=1, groups=inner_dim)
        self.conv2 = nn.Conv2d(inner_dim, inner_dim, 5, padding=2, groups=inner_dim)
        self.conv3 = nn.Conv2d(inner_dim, inner_dim, 7, padding=3, groups=inner_dim)
        self.projector = nn.Conv2d(inner_dim, inner_dim, 1)
        self.project2 = nn.Linear(inner_dim, channels)
        self.num_prefix = num_prefix
        self.prefix_mode = prefix_mode

    def load_from(self, norm, down, conv_filter, up) -> ReferenceMona:
        """Copy the weights of one mona_peft Mona (its four pieces) into this reference."""
        with torch.no_grad():
            self.norm.weight.copy_(norm.weight)
            self.norm.bias.copy_(norm.bias)
            self.gamma.copy_(norm.gamma)
            self.gammax.copy_(norm.gammax)
            self.project1.load_state_dict(down.state_dict())
            self.project2.load_state_dict(up.state_dict())
            for conv, k in ((self.conv1, 3), (self.conv2, 5), (self.conv3, 7)):
                conv.weight.copy_(getattr(conv_filter, f"dw{k}_weight"))
                conv.bias.copy_(getattr(conv_filter, f"dw{k}_bias"))
            self.projector.weight.copy_(conv_filter.pw_weight)
            self.projector.bias.copy_(conv_filter.pw_bias)
        return self

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        identity = x
        x = self.norm(x) * self.gamma + x * self.gammax
        z = self.project1(x)
        prefix, patches = z[:, : self.num_prefix], z[:, self.num_prefix :]
        b, n, c = patches.shape
        grid = patches.reshape(b, hw[0], hw[1], c).permute(0, 3, 1, 2)
        grid = (self.conv1(grid) + self.conv2(grid) + self.conv3(grid)) / 3.0 + grid
        grid = grid + self.projector(grid)
        patches = grid.permute(0, 2, 3, 1).reshape(b, n, c)
        if self.num_prefix and self.prefix_mode == "adapt":
            prefix = prefix + F.linear(prefix, self.projector.weight[:, :, 0, 0], self.projector.bias)
            z = torch.cat([prefix, patches], dim=1)
            return identity + self.project2(F.gelu(z))
        out = self.project2(F.gelu(patches))
        return identity + F.pad(out, (0, 0, self.num_prefix, 0))


def reference_monas(layer, adapter: str = "default", num_prefix: int = 0, prefix_mode: str = "adapt", sites=None):
    """The reference Monas holding the weights of ``layer``'s adapter ``adapter``, one per site (both by default)."""
    monas = []
    for site in sites or ("attn", "mlp"):
        pieces = [getattr(layer, f"mona_{site}_{piece}")[adapter] for piece in ("norm", "down", "filter", "up")]
        reference = ReferenceMona(pieces[0].weight.shape[0], pieces[1].out_features, num_prefix, prefix_mode)
        monas.append(reference.to(pieces[1].weight.dtype).load_from(*pieces).eval())  # float64 stays float64
    return monas


def post_attention_stream(block: nn.Module, consumer_name: str, *args) -> torch.Tensor:
    """Run the plain block and capture the residual stream right after its attention residual add."""
    captured = {}
    consumer = block.get_submodule(consumer_name)
    handle = consumer.register_forward_pre_hook(lambda module, inputs: captured.setdefault("h", inputs[0]))
    try:
        block(*args)
    finally:
        handle.remove()
    return captured["h"]


def reference_swin_block(block, hidden, hw, mona_attn, mona_mlp) -> torch.Tensor:
    """Official Swin block with Mona: x = x + attn(x); x = mona1(x); x = x + mlp(norm2(x)); x = mona2(x)."""
    x = post_attention_stream(block, "layernorm_after", hidden, hw)
    x = mona_attn(x, hw)
    x = x + block.dropout(block.mlp(block.layernorm_after(x)))
    return mona_mlp(x, hw)


def reference_vit_block(block, hidden, hw, mona_attn, mona_mlp) -> torch.Tensor:
    """A pre-norm ViT block with the same two Monas on the residual stream."""
    x = post_attention_stream(block, "layernorm_after", hidden)
    x = mona_attn(x, hw)
    x = x + block.dropout(block.mlp(block.layernorm_after(x)))
    return mona_mlp(x, hw)


def reference_pre_norm_block(block, hidden, hw, mona_attn, mona_mlp, norm: str, mlp, *args) -> torch.Tensor:
    """A pre-norm block of any family with the two Monas: the plain block up to its attention residual add (the
    input of its second norm ``norm``), then ``mona_attn``, the MLP branch ``mlp(block, x)`` added, and ``mona_mlp``.
    ``args`` follow ``hidden`` in the block's call."""
    x = post_attention_stream(block, norm, hidden, *args)
    x = mona_attn(x, hw)
    x = x + mlp(block, x)
    return mona_mlp(x, hw)


def reference_cnn_block(block, features, mona) -> torch.Tensor:
    """A CNN block (channels-first maps) with one Mona after its residual add, as the authors place it in CNNs."""
    out = block(features)
    batch, channels, height, width = out.shape
    tokens = out.flatten(2).transpose(1, 2)
    return mona(tokens, (height, width)).transpose(1, 2).reshape(batch, channels, height, width)
