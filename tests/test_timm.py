"""Mona on plain timm models (no transformers config), as PEFT supports them for LoRA.

The checklist (tests/test_peft_checklist.py) runs every method on timm's ViT, Swin and ConvNeXt inside transformers'
``TimmWrapperForImageClassification``. Here: a plain ``timm.create_model(...)`` trains, saves and reloads in a fresh
process with identical outputs; each timm block with Mona equals an independent float64 reference; a timm model no
spec describes is refused by name; and importing mona_peft never needs timm. The timm cases skip where timm cannot be
imported: ``scripts/test_timm.sh`` runs them in a venv of their own (README, "timm models").
"""

from __future__ import annotations

import textwrap

import pytest
import torch
from conftest import TIMM_MISSING, TINY_TIMM_MODELS, build_tiny_pixel_values, run_in_fresh_process
from mona_reference import post_attention_stream, reference_cnn_block, reference_monas, reference_pre_norm_block
from peft import get_peft_model

import mona_peft
from mona_peft.tuners.architectures import UnsupportedArchitectureError, head_modules
from mona_peft.tuners.mona.layer import MonaLayer

needs_timm = pytest.mark.skipif(bool(TIMM_MISSING), reason=TIMM_MISSING or "")


def create_timm_model(key: str, seed: int = 0) -> torch.nn.Module:
    """The tiny timm model of ``key`` (``"timm:VisionTransformer"``...), as ``timm.create_model`` builds it."""
    import timm

    torch.manual_seed(seed)
    settings = TINY_TIMM_MODELS[key]
    return timm.create_model(settings["architecture"], pretrained=False, num_classes=3, **settings["model_args"]).eval()


def test_importing_mona_peft_never_needs_timm():
    # timm (and torchvision) made unimportable, as on a CPU install that has neither: mona_peft imports and adapts.
    code = textwrap.dedent(
        """
        import sys

        sys.modules["timm"] = sys.modules["torchvision"] = None  # `import timm` raises ImportError; find_spec says None
        import transformers
        from peft import get_peft_model
        import mona_peft

        base = transformers.ViTModel(transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                            intermediate_size=32, image_size=16, patch_size=8))
        get_peft_model(base, mona_peft.MonaConfig(inner_dim=4))
        imported = {name.split(".")[0] for name, module in sys.modules.items() if module is not None}
        assert not {"timm", "torchvision"} & imported
        """
    )
    run_in_fresh_process(code)


@needs_timm
def test_a_timm_model_no_spec_describes_is_refused_by_name():
    import timm

    resnet = timm.create_model("resnet18", pretrained=False, num_classes=3)
    with pytest.raises(UnsupportedArchitectureError, match=r"ResNet.*timm:ResNet.*timm:VisionTransformer"):
        get_peft_model(resnet, mona_peft.MonaConfig())


_RELOAD = """
import sys
import timm, torch
import mona_peft  # noqa: F401  (registers Mona with PEFT)
from peft import PeftModel

architecture, model_args, base_path, adapter_dir, x_path, out_path = sys.argv[1:]
base = timm.create_model(architecture, pretrained=False, num_classes=3, **eval(model_args))
base.load_state_dict(torch.load(base_path))
model = PeftModel.from_pretrained(base, adapter_dir).eval()
with torch.no_grad():
    torch.save(model(torch.load(x_path)), out_path)
"""


@needs_timm
@pytest.mark.parametrize("key", sorted(TINY_TIMM_MODELS))
def test_a_plain_timm_model_trains_saves_and_reloads_in_a_fresh_process(key, tmp_path):
    base = create_timm_model(key)
    torch.save(base.state_dict(), tmp_path / "base.pt")  # the "pretrained" weights the user loads again
    assert head_modules(base) == ["head"]
    model = get_peft_model(base, mona_peft.MonaConfig(inner_dim=4, modules_to_save=["head"]))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".mona_" in name or ".modules_to_save." in name for name in trainable)

    x, labels = build_tiny_pixel_values(batch=4), torch.tensor([0, 1, 2, 0])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        expected = model(x)
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size < 200_000  # adapter and head only

    torch.save(x, tmp_path / "x.pt")
    settings = TINY_TIMM_MODELS[key]
    argv = [settings["architecture"], repr(settings["model_args"]), tmp_path / "base.pt", tmp_path / "adapter"]
    run_in_fresh_process(_RELOAD, *argv, tmp_path / "x.pt", tmp_path / "out.pt")
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=1e-6, atol=1e-7)


def _adapted_block(key: str, index: int) -> MonaLayer:
    """The ``index``-th Mona layer of the tiny timm model ``key``, in float64, with random (non-identity) Monas."""
    model = get_peft_model(create_timm_model(key), mona_peft.MonaConfig(inner_dim=8)).double().eval()
    layer = [m for m in model.modules() if isinstance(m, MonaLayer)][index]
    for name, p in layer.named_parameters():
        if "mona_" in name:
            p.data.normal_(0, 0.2)
    return layer


def _random(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


@needs_timm
def test_timm_vit_block_with_registers_matches_the_reference_in_float64():
    layer = _adapted_block("timm:VisionTransformer", 0)
    hw, num_prefix = (3, 5), 3  # non-square grid; CLS and 2 registers
    layer.token_grid.size = hw
    hidden = _random(2, num_prefix + 15, layer.channels)
    mona_attn, mona_mlp = reference_monas(layer, num_prefix=num_prefix)
    with torch.no_grad():
        expected = reference_pre_norm_block(
            layer.base_layer, hidden, hw, mona_attn, mona_mlp, "norm2", lambda b, x: b.ls2(b.mlp(b.norm2(x)))
        )
        actual = layer(hidden)
        plain = layer.base_layer(hidden)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    assert (actual - plain).abs().max() > 1e-3


@needs_timm
def test_timm_swin_block_matches_the_reference_in_float64():
    # the second block of the first stage: shifted windows on its 8x8 map, channels last in and out; it flattens the
    # map to tokens between its two adds
    layer = _adapted_block("timm:SwinTransformer", 1)
    assert layer.base_layer.shift_size != (0, 0)
    hidden = _random(2, 8, 8, layer.channels)
    mona_attn, mona_mlp = reference_monas(layer)
    block = layer.base_layer
    with torch.no_grad():
        x = post_attention_stream(block, "norm2", hidden)  # (batch, 64, channels)
        x = mona_attn(x, (8, 8))
        x = mona_mlp(x + block.drop_path2(block.mlp(block.norm2(x))), (8, 8))
        expected = x.reshape(hidden.shape)
        actual = layer(hidden)
        plain = block(hidden)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    assert (actual - plain).abs().max() > 1e-3


@needs_timm
def test_timm_convnext_block_gets_one_mona_after_its_residual_add_in_float64():
    layer = _adapted_block("timm:ConvNeXt", 0)
    assert not layer.has_mona("default", "attn")
    features = _random(2, layer.channels, 3, 5)  # non-square map
    (mona,) = reference_monas(layer, sites=("mlp",))
    with torch.no_grad():
        expected = reference_cnn_block(layer.base_layer, features, mona)
        actual = layer(features)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    assert (actual - layer.base_layer(features)).abs().max() > 1e-3
