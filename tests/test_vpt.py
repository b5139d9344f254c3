"""VPT held to PEFT's per-method checklist, on every architecture it supports (tiny models, CPU, seconds).

The forward pass itself is checked against the paper in ``test_vpt_reference.py``; what every method shares
(fresh-process reload, merging, bfloat16, torch.compile, ...) is checked for VPT-shallow and VPT-deep on every
architecture in ``test_peft_checklist.py``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import transformers as tf
from conftest import WITHOUT_CLASSIFIER, build_tiny_model
from peft import PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.utils import PeftType
from safetensors.torch import load_file
from torch import nn

import mona_peft
from mona_peft import VPTConfig, VPTLayer
from mona_peft.tuners.methods import build_method, is_adapter_parameter
from mona_peft.tuners.registry import methods
from mona_peft.tuners.vpt.layer import prompt_init_bound

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCHS = ["swin", "vit"]
NUM_PROMPTS = 3
# VPT's architectures (not Swin v2: see mona_peft.tuners.architectures); DeiT with its distillation head.
FAMILY = sorted(
    t
    for t in set(mona_peft.supported_model_types()) - WITHOUT_CLASSIFIER
    if mona_peft.SUPPORTED_ARCHITECTURES[t].prompt_layout
)
OVERRIDES = {"deit": dict(model_class=tf.DeiTForImageClassificationWithTeacher)}


def build_family(model_type: str) -> nn.Module:
    return build_tiny_model(model_type, **OVERRIDES.get(model_type, {}))


def vpt_config(**kwargs) -> VPTConfig:
    kwargs.setdefault("num_prompts", NUM_PROMPTS)
    return VPTConfig(**kwargs)


def randomize_adapter(model: nn.Module, adapter_name: str, seed: int, scale: float = 0.5) -> None:
    """Seeded noise on one adapter's prompts and head copy (a fresh head copy equals the base head)."""
    generator = torch.Generator().manual_seed(seed)
    touched = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if (".vpt_" in name or ".modules_to_save." in name) and f".{adapter_name}." in name:
                param.add_(scale * torch.randn(param.shape, generator=generator, dtype=param.dtype))
                touched += 1
    assert touched > 0, f"no parameter of adapter {adapter_name!r} found"


def logits(model: nn.Module, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=pixel_values, **kwargs).logits


def assert_differs(a: torch.Tensor, b: torch.Tensor, at_least: float = 1e-4) -> None:
    difference = (a - b).abs().max().item()
    assert difference > at_least, f"outputs should differ, max difference {difference}"


def vpt_layers(model: nn.Module) -> list[VPTLayer]:
    return [m for m in model.modules() if isinstance(m, VPTLayer)]


@pytest.fixture
def adapted(tiny_model, tiny_pixel_values):
    """Factory: ``adapted(arch, **config)`` -> (base logits, eval-mode PeftModel with a randomized 'default', x)."""

    def build(arch: str, seed: int = 0, adapter_seed: int = 11, **config_kwargs):
        config_kwargs.setdefault("modules_to_save", ["classifier"])
        base = tiny_model(arch, seed=seed)
        x = tiny_pixel_values(batch=2)
        base_logits = logits(base, x)
        torch.manual_seed(adapter_seed)
        model = get_peft_model(base, vpt_config(**config_kwargs)).eval()
        randomize_adapter(model, "default", seed=adapter_seed)
        return base_logits, model, x

    return build


# --------------------------------------------------------------------------------------------------------------------
# Config, registration, initialisation, sizes
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_prompts=0), "num_prompts"),
        (dict(num_prompts=2.5), "num_prompts"),
        (dict(num_prompts=True), "num_prompts"),
        (dict(deep="yes"), "deep"),
        (dict(prompt_dropout=1.0), "prompt_dropout"),
        (dict(prompt_dropout=-0.1), "prompt_dropout"),
        (dict(target_modules=3), "target_modules"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VPTConfig(**kwargs)


def test_registered_with_peft():
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    assert PeftType.VPT == "VPT" and VPTConfig().peft_type is PeftType.VPT
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.VPT] is VPTConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.VPT] is mona_peft.VPTModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.VPT] == "vpt_"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
def test_prompt_sizes_and_paper_initialisation(arch, deep, tiny_model):
    base = tiny_model(arch)
    # paper: uniform(-b, b), b = sqrt(6 / (3 * patch_h * patch_w + d)), d the patch embedding's width
    bound = {"vit": math.sqrt(6 / (3 * 8 * 8 + 32)), "swin": math.sqrt(6 / (3 * 4 * 4 + 16))}[arch]
    assert prompt_init_bound(base.config.patch_size, 32 if arch == "vit" else 16) == pytest.approx(bound)
    model = get_peft_model(base, VPTConfig(num_prompts=7, deep=deep))
    prompts = {n: p for n, p in model.named_parameters() if p.requires_grad}
    widths = {"vit": [32, 32], "swin": [16, 16, 32, 32]}[arch]
    expected = 7 * (sum(widths) if deep else widths[0])
    assert sum(p.numel() for p in prompts.values()) == expected
    for name, prompt in prompts.items():
        assert name.endswith(".vpt_prompts.default.weight"), name
        assert prompt.abs().max() <= bound and prompt.abs().max() > 0.5 * bound
    assert len(vpt_layers(model)) == len(widths)  # every block is wrapped; only some own prompts


def test_unsupported_models_raise_clear_errors():
    swinv2 = build_tiny_model("swinv2")
    with pytest.raises(ValueError, match="VPT does not support model_type 'swinv2'.*swin"):
        get_peft_model(swinv2, vpt_config())
    bert = tf.BertModel(tf.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(mona_peft.UnsupportedArchitectureError):
        get_peft_model(bert, vpt_config())


def test_target_modules_must_select_blocks(tiny_vit):
    with pytest.raises(ValueError, match="matches none of the backbone"):
        get_peft_model(tiny_vit(), vpt_config(target_modules=["nonexistent"]))
    with pytest.raises(ValueError, match="whole transformer blocks"):
        get_peft_model(tiny_vit(), vpt_config(target_modules=r".*layers\.0(\.attention)?"))


# --------------------------------------------------------------------------------------------------------------------
# Every architecture: prompts change the output, never the token layout; disabled is exact
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
@pytest.mark.parametrize(
    "model_type",
    [
        pytest.param(t, marks=pytest.mark.skip(reason="timm's forward_intermediates keeps VPT's prompts (refused.md)"))
        if t.startswith("timm:")
        else t
        for t in FAMILY
    ],
)
def test_every_architecture(model_type, deep):
    base = build_family(model_type)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = base(pixel_values=x, output_hidden_states=True)
    model = get_peft_model(base, vpt_config(deep=deep)).eval()
    randomize_adapter(model, "default", seed=3)
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
        with model.disable_adapter():
            disabled = model(pixel_values=x, output_hidden_states=True)
    assert_differs(out.logits, plain.logits)
    torch.testing.assert_close(disabled.logits, plain.logits, rtol=0, atol=0)
    # hidden states keep the model's own layout (prompts removed), the embeddings are untouched
    assert [h.shape for h in out.hidden_states] == [h.shape for h in plain.hidden_states]
    torch.testing.assert_close(out.hidden_states[0], plain.hidden_states[0], rtol=0, atol=0)
    assert_differs(out.hidden_states[-1], plain.hidden_states[-1])
    assert model.base_model.prompt_stream.prompts is None  # Swin's stream is cleared after the last block


def test_dinov2_head_never_averages_prompts():
    base = build_family("dinov2_with_registers")  # two register tokens
    model = get_peft_model(base, vpt_config()).eval()
    seen = {}
    head = model.base_model.model.classifier
    handle = head.register_forward_pre_hook(lambda module, args: seen.setdefault("input", args[0]))
    tokens = {}
    backbone = model.base_model.model.dinov2_with_registers
    hook = backbone.layernorm.register_forward_hook(lambda m, a, o: tokens.setdefault("final", o))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(pixel_values=x)
    handle.remove()
    hook.remove()
    final = tokens["final"]
    assert final.shape[1] == 1 + 2 + 16  # CLS, 2 registers, 4x4 patches: no prompt reached the final norm
    expected = torch.cat([final[:, 0], final[:, 3:].mean(1)], dim=1)
    torch.testing.assert_close(seen["input"], expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_each_image_is_independent_of_the_rest_of_its_batch(arch, tiny_model):
    # Swin's prompts are shared by the windows of *one* image (the official code's window order mixes the images of
    # a batch); float64 makes a leak of even 1e-9 visible.
    base = tiny_model(arch).double()
    model = get_peft_model(base, vpt_config()).eval()
    randomize_adapter(model, "default", seed=5, scale=0.1)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = x * torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)[:, None, None, None]
    together = logits(model, x)
    for row in range(3):
        torch.testing.assert_close(logits(model, x[row : row + 1])[0], together[row], rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", ARCHS)
def test_non_square_inputs(arch, adapted, tiny_model):
    _, model, square = adapted(arch)
    reference = tiny_model(arch)
    logits(reference, square)  # transformers' Swin blocks keep the window/shift clamp of their last input: same history
    # Swin: a 10x14 patch grid, padded to whole windows (transformers' Swin fails on grids whose merged stage is
    # smaller than a window, e.g. 24x40 images); ViT: a 3x5 grid with interpolated position embeddings.
    x = torch.randn(2, 3, *((40, 56) if arch == "swin" else (24, 40)))
    kwargs = {"interpolate_pos_encoding": True} if arch == "vit" else {}
    plain = logits(reference, x, **kwargs)
    out = logits(model, x, **kwargs)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    assert_differs(out, plain)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, x, **kwargs), plain, rtol=0, atol=0)


@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
def test_vit_attention_mask_is_extended_for_the_prompts(deep, adapted):
    _, model, x = adapted("vit", deep=deep)
    # a user-given mask covers CLS + patches; VPT adds the prompt positions (visible to all)
    ones = torch.ones(2, 17, dtype=torch.long)
    torch.testing.assert_close(logits(model, x, attention_mask=ones), logits(model, x), rtol=0, atol=1e-6)
    # hiding patch 5 (pixels 8:16, 8:16) from every block: its content can no longer reach CLS. A mask misaligned
    # with the prompts would hide a prompt or another patch instead, and let patch 5 leak.
    hide = ones.clone()
    hide[:, 1 + 5] = 0
    changed = x.clone()
    changed[:, :, 8:16, 8:16] += 3.0
    hidden = logits(model, x, attention_mask=hide)
    assert_differs(hidden, logits(model, x))
    torch.testing.assert_close(logits(model, changed, attention_mask=hide), hidden, rtol=0, atol=1e-6)
    assert_differs(logits(model, changed), logits(model, x))


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------------


def test_save_pretrained_writes_only_prompts_and_head(adapted, tmp_path):
    for arch in ARCHS:
        _, model, _ = adapted(arch, deep=True)
        out = tmp_path / arch
        model.save_pretrained(out)
        assert sorted(os.listdir(out)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
        state = load_file(out / "adapter_model.safetensors")
        prompt_keys = sorted(k for k in state if ".vpt_prompts." in k)
        head_keys = sorted(k for k in state if ".classifier." in k)
        assert sorted(prompt_keys + head_keys) == sorted(state)
        assert len(prompt_keys) == {"swin": 4, "vit": 2}[arch]
        assert all(k.endswith(".vpt_prompts.weight") for k in prompt_keys)
        config = json.loads((out / "adapter_config.json").read_text())
        assert config["peft_type"] == "VPT" and config["num_prompts"] == NUM_PROMPTS and config["deep"] is True
        loaded = PeftConfig.from_pretrained(out)
        assert isinstance(loaded, VPTConfig) and loaded.deep and loaded.num_prompts == NUM_PROMPTS


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_round_trip_and_low_cpu_mem_usage(arch, adapted, tiny_model, tmp_path):
    _, source, x = adapted(arch, deep=True)
    expected = logits(source, x)
    state = get_peft_model_state_dict(source)
    target = get_peft_model(tiny_model(arch), vpt_config(deep=True, modules_to_save=["classifier"])).eval()
    assert_differs(logits(target, x), expected)
    result = set_peft_model_state_dict(target, state)
    assert not result.unexpected_keys
    torch.testing.assert_close(logits(target, x), expected, rtol=0, atol=0)

    empty = get_peft_model(
        tiny_model(arch), vpt_config(deep=True, modules_to_save=["classifier"]), low_cpu_mem_usage=True
    )
    prompts = [p for n, p in empty.named_parameters() if ".vpt_" in n]
    assert prompts and all(p.device.type == "meta" for p in prompts)
    set_peft_model_state_dict(empty, state, low_cpu_mem_usage=True)
    torch.testing.assert_close(logits(empty.eval(), x), expected, rtol=0, atol=0)

    source.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model(arch), tmp_path, low_cpu_mem_usage=True).eval()
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    torch.testing.assert_close(logits(loaded, x), expected, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------------------
# Several adapters, unload
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_add_set_disable_delete_adapter(arch, adapted, tiny_model, tmp_path):
    base_logits, model, x = adapted(arch)
    out_default = logits(model, x)
    model.add_adapter("defaultdeep", vpt_config(deep=True, num_prompts=2, modules_to_save=["classifier"]))
    randomize_adapter(model, "defaultdeep", seed=21)
    assert model.active_adapters == ["default"]
    torch.testing.assert_close(logits(model, x), out_default, rtol=0, atol=0)

    model.set_adapter("defaultdeep")
    out_deep = logits(model, x)
    assert_differs(out_deep, out_default)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".defaultdeep." in n for n in trainable)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, x), base_logits, rtol=0, atol=0)

    # names that are substrings of each other save and reload independently
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_model(arch), tmp_path / "defaultdeep", adapter_name="defaultdeep")
    reloaded.load_adapter(tmp_path, adapter_name="default")
    reloaded.eval()
    torch.testing.assert_close(logits(reloaded, x), out_deep, rtol=0, atol=0)
    reloaded.set_adapter("default")
    torch.testing.assert_close(logits(reloaded, x), out_default, rtol=0, atol=0)

    model.set_adapter("default")
    torch.testing.assert_close(logits(model, x), out_default, rtol=0, atol=0)
    model.delete_adapter("defaultdeep")
    assert set(model.peft_config) == {"default"}
    assert not [n for n, _ in model.named_parameters() if ".defaultdeep." in n]
    assert all(set(layer.vpt_mode) == {"default"} for layer in vpt_layers(model))
    torch.testing.assert_close(logits(model, x), out_default, rtol=0, atol=0)

    model.add_adapter("b", vpt_config())
    model.base_model.set_adapter(["default", "b"])
    with pytest.raises(ValueError, match="one adapter at a time"):
        logits(model, x)


@pytest.mark.parametrize("arch", ARCHS)
def test_unload_returns_the_exact_base_model(arch, adapted, tiny_model):
    reference = tiny_model(arch)
    base_logits, model, x = adapted(arch, modules_to_save=None, deep=True)
    model.add_adapter("other", vpt_config())
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model(pixel_values=x, labels=torch.tensor([0, 1])).loss.backward()  # exercise every hook once
    model.gradient_checkpointing_disable()
    model.eval()
    unloaded = model.unload()
    assert type(unloaded) is type(reference)
    reference_modules = dict(reference.named_modules())
    for name, module in unloaded.named_modules():
        assert type(module) is type(reference_modules[name]), name
        hooks = (module._forward_pre_hooks, module._forward_hooks, module._backward_hooks)
        assert not any(hooks), f"leftover hook on {name or 'the model'} ({type(module).__name__})"
    assert unloaded_modules_match(unloaded, reference)
    torch.testing.assert_close(logits(unloaded, x), base_logits, rtol=0, atol=0)


def unloaded_modules_match(unloaded: nn.Module, reference: nn.Module) -> bool:
    state, expected = unloaded.state_dict(), reference.state_dict()
    return state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)


# --------------------------------------------------------------------------------------------------------------------
# Gradients, checkpointing, FSDP-friendly layout
# --------------------------------------------------------------------------------------------------------------------


def _is_trained(name: str) -> bool:
    return ".vpt_" in name or ".modules_to_save." in name


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_only_on_prompts_and_modules_to_save(arch, adapted):
    _, model, x = adapted(arch, deep=True)
    model.add_adapter("inactive", vpt_config(deep=True, modules_to_save=["classifier"]))
    model.train()
    model(pixel_values=x, labels=torch.tensor([0, 2])).loss.backward()
    checked = 0
    for name, param in model.named_parameters():
        if _is_trained(name) and ".default." in name:
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, name
            checked += 1
        else:
            assert not param.requires_grad and param.grad is None, name
    assert checked == {"swin": 4, "vit": 2}[arch] + 2


def _gradients(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    loss = model(pixel_values=x, labels=labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("use_reentrant", [True, False])
@pytest.mark.parametrize("arch, deep", [("swin", False), ("swin", True), ("vit", False), ("vit", True)])
def test_gradient_checkpointing_gives_the_same_gradients(arch, deep, use_reentrant, adapted, recwarn):
    _, model, x = adapted(arch, deep=deep)
    labels = torch.tensor([1, 2])
    model.train()
    loss, expected = _gradients(model, x, labels)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(expected) == trainable

    calls = []
    for layer in vpt_layers(model):
        layer.base_layer.attention.register_forward_hook(lambda *args: calls.append(1))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    checkpointed_loss, got = _gradients(model, x, labels)
    assert len(calls) == 2 * len(vpt_layers(model)), "every block should run again in the backward pass"
    assert set(got) == trainable, f"missing gradients: {sorted(trainable - set(got))[:5]}"
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=1e-6)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=0, atol=1e-5, msg=name)
    assert not [w for w in recwarn if "requires_grad=True" in str(w.message)]
    if arch == "swin":  # the stages' own checkpointing is suspended only while they run
        stages = model.base_model.model.swin.encoder.layers
        assert all(stage.gradient_checkpointing for stage in stages)
    model.gradient_checkpointing_disable()


def test_prompts_live_in_leaf_modules(adapted):
    _, model, _ = adapted("swin", deep=True)
    for name, param in model.named_parameters():
        if param.requires_grad:
            owner = model.get_submodule(name.rpartition(".")[0])
            assert not list(owner.children()) and not isinstance(owner, (nn.ParameterDict, nn.ParameterList)), name


def test_prompt_dropout_only_in_training(adapted):
    _, model, x = adapted("vit", prompt_dropout=0.5)
    torch.testing.assert_close(logits(model, x), logits(model, x), rtol=0, atol=0)
    model.train()
    torch.manual_seed(0)
    first = logits(model, x)
    second = logits(model, x)
    assert_differs(first, second)


# --------------------------------------------------------------------------------------------------------------------
# Mixed-adapter batches
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_adapter_batch_matches_each_adapter_alone(arch, tiny_model, tiny_pixel_values):
    x = tiny_pixel_values(batch=4)
    base_logits = logits(tiny_model(arch), x)
    model = get_peft_model(tiny_model(arch), vpt_config(deep=True, modules_to_save=["classifier"]), adapter_name="a")
    randomize_adapter(model, "a", seed=1)
    model.add_adapter("b", vpt_config(deep=True, modules_to_save=["classifier"]))
    randomize_adapter(model, "b", seed=2)
    model.eval()
    alone = {}
    for name in ("a", "b"):
        model.set_adapter(name)
        alone[name] = logits(model, x)
    alone["__base__"] = base_logits
    assert_differs(alone["a"], alone["b"])

    routing = ["a", "__base__", "b", "a"]
    mixed = logits(model, x, adapter_names=routing)
    for row, name in enumerate(routing):
        torch.testing.assert_close(mixed[row], alone[name][row], rtol=0, atol=1e-5, msg=f"row {row} ({name})")
    torch.testing.assert_close(logits(model, x, adapter_names=["__base__"] * 4), base_logits, rtol=0, atol=0)
    assert all(not m._forward_pre_hooks for m in vpt_layers(model))  # routing hooks removed
    torch.testing.assert_close(logits(model, x), alone["b"], rtol=0, atol=0)

    model.add_adapter("shallow", vpt_config(modules_to_save=["classifier"]))
    with pytest.raises(ValueError, match="same prompt layout"):
        logits(model, x, adapter_names=["a", "shallow", "a", "a"])
    with pytest.raises(ValueError, match="Unknown"):
        logits(model, x, adapter_names=["a", "nope", "b", "a"])
    model.train()
    with pytest.raises(ValueError, match="eval"):
        model(pixel_values=x, adapter_names=routing)


# --------------------------------------------------------------------------------------------------------------------
# Training script methods
# --------------------------------------------------------------------------------------------------------------------


def test_training_methods(tiny_vit):
    assert {"vpt_shallow", "vpt_deep"} <= set(methods())
    shallow = build_method(tiny_vit(), "vpt_shallow", ["classifier"], num_prompts=5)
    deep = build_method(tiny_vit(), "vpt_deep", ["classifier"], num_prompts=5)
    for model, deep_flag in ((shallow, False), (deep, True)):
        config = model.peft_config["default"]
        assert isinstance(config, VPTConfig) and config.deep is deep_flag and config.num_prompts == 5
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert [n for n in names if is_adapter_parameter(n)] == [n for n in names if ".vpt_prompts." in n]
    from mona_peft.training import parse_args

    args = parse_args(["--method", "vpt_deep", "--num_prompts", "7", "--model_name_or_path", "x"])
    assert args.method == "vpt_deep" and args.options == {"num_prompts": 7}
