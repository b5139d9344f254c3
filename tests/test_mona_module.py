"""Mona's exact size, its fused filter, and config validation."""

import pytest
import torch
from peft import get_peft_model
from transformers import SwinConfig, SwinModel

import mona_peft
from mona_peft.tuners.mona.layer import MultiCognitiveFilter

SWIN_SIZES = {  # official figures: Mona parameters added to the backbone, head excluded
    "swin-t": (dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]), 1_408_128),
    "swin-b": (dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32]), 3_667_456),
    "swin-l": (dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48]), 5_267_712),
}


@pytest.mark.parametrize("name", sorted(SWIN_SIZES))
def test_default_config_adds_the_official_parameter_count(name):
    kwargs, expected = SWIN_SIZES[name]
    with torch.device("meta"):
        model = get_peft_model(SwinModel(SwinConfig(image_size=224, window_size=7, **kwargs)), mona_peft.MonaConfig())
    added = sum(p.numel() for n, p in model.named_parameters() if ".mona_" in n)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert added == trainable == expected
    widths = [kwargs["embed_dim"] * 2**stage for stage, depth in enumerate(kwargs["depths"]) for _ in range(depth)]
    assert expected == sum(2 * (133 * width + 9728) for width in widths)  # the paper's per-Mona formula


@pytest.mark.parametrize("kernel_sizes", [(3, 5, 7), (1, 3), (5,)])
def test_fused_filter_equals_unfused_in_value_and_gradient(kernel_sizes):
    torch.manual_seed(0)
    conv_filter = MultiCognitiveFilter(16, kernel_sizes).double()
    z = torch.randn(3, 6 * 10, 16, dtype=torch.double, requires_grad=True)
    upstream = torch.randn(3, 60, 16, dtype=torch.double)
    results = {}
    for fused in (True, False):
        conv_filter.fused = fused
        conv_filter.zero_grad()
        z.grad = None
        out = conv_filter.project(conv_filter.spatial(z, (6, 10)))
        (out * upstream).sum().backward()
        results[fused] = (out.detach(), z.grad.clone(), [p.grad.clone() for p in conv_filter.parameters()])
    (out_f, dz_f, dp_f), (out_u, dz_u, dp_u) = results[True], results[False]
    torch.testing.assert_close(out_f, out_u, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dz_f, dz_u, rtol=1e-10, atol=1e-10)
    for fused_grad, unfused_grad in zip(dp_f, dp_u, strict=True):
        torch.testing.assert_close(fused_grad, unfused_grad, rtol=1e-10, atol=1e-10)


def test_fused_filter_float32_tolerance_and_channels_last_layout():
    torch.manual_seed(0)
    conv_filter = MultiCognitiveFilter(64)
    z = torch.randn(2, 14 * 14, 64)
    fused = conv_filter.spatial(z, (14, 14))
    conv_filter.fused = False
    unfused = conv_filter.spatial(z, (14, 14))
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)
    assert fused.is_contiguous()  # the conv ran channels-last: back to tokens without a copy


def test_fused_kernel_is_the_padded_average_plus_centre_delta():
    conv_filter = MultiCognitiveFilter(4, (3, 5, 7))
    kernel, bias = conv_filter.fused_depthwise()
    assert kernel.shape == (4, 1, 7, 7)
    expected_centre = (
        conv_filter.dw3_weight[:, 0, 1, 1] + conv_filter.dw5_weight[:, 0, 2, 2] + conv_filter.dw7_weight[:, 0, 3, 3]
    ) / 3 + 1
    torch.testing.assert_close(kernel[:, 0, 3, 3], expected_centre)
    torch.testing.assert_close(kernel[:, 0, 0, 0], conv_filter.dw7_weight[:, 0, 0, 0] / 3)
    torch.testing.assert_close(bias, (conv_filter.dw3_bias + conv_filter.dw5_bias + conv_filter.dw7_bias) / 3)


def test_official_initialisation():
    torch.manual_seed(0)
    model = get_peft_model(SwinModel(SwinConfig(embed_dim=32, depths=[2], num_heads=[2])), mona_peft.MonaConfig())
    params = dict(model.named_parameters())
    downs = [p for n, p in params.items() if "mona_attn_down" in n and n.endswith("weight")]
    assert 0.015 < torch.cat([d.flatten() for d in downs]).std() < 0.025
    assert all((p == 0).all() for n, p in params.items() if ("_down" in n or "_up" in n) and n.endswith("bias"))
    assert all((p == 1e-6).all() for n, p in params.items() if n.endswith(".gamma"))
    assert all((p == 1).all() for n, p in params.items() if n.endswith(".gammax"))
    identity = get_peft_model(
        SwinModel(SwinConfig(embed_dim=32, depths=[2], num_heads=[2])), mona_peft.MonaConfig(init_weights="identity")
    )
    assert all((p == 0).all() for n, p in identity.named_parameters() if "mona_mlp_up" in n or "mona_attn_up" in n)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(inner_dim=0), "inner_dim"),
        (dict(kernel_sizes=(3, 4)), r"odd.*\[4\]"),
        (dict(kernel_sizes=(0,)), "positive odd"),
        (dict(kernel_sizes=()), "at least one"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(dropout=-0.1), "dropout"),
        (dict(init_weights="zeros"), "init_weights"),
        (dict(prefix_tokens="drop"), "prefix_tokens"),
    ],
)
def test_invalid_config_values_raise_at_config_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mona_peft.MonaConfig(**kwargs)


def test_config_json_round_trip(tmp_path):
    config = mona_peft.MonaConfig(
        inner_dim=32, kernel_sizes=(3, 5), prefix_tokens="skip", modules_to_save=["classifier"]
    )
    config.save_pretrained(tmp_path)
    loaded = mona_peft.MonaConfig.from_pretrained(tmp_path)
    assert loaded.kernel_sizes == (3, 5) and loaded.inner_dim == 32 and loaded.prefix_tokens == "skip"
    assert loaded.peft_type == "MONA"
