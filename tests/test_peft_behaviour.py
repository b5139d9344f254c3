"""Mona's own side of PEFT's per-method checklist: checkpoint contents and config round trips, several adapters and
names that are substrings of each other, unload, dtype autocasting, the adapted hidden states, the HF Trainer,
FSDP-friendly layout and mixed-adapter batches. Every test runs on the tiny Swin and/or ViT of ``conftest.py``.

What every method shares (fresh-process reload, merging, low_cpu_mem_usage, gradients, gradient checkpointing,
torch.compile, ...) is checked for Mona on every architecture in ``test_peft_checklist.py``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from peft import (
    AutoPeftModel,
    PeftConfig,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from peft.utils import ModulesToSaveWrapper
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForImageClassification, Trainer, TrainingArguments

from mona_peft import MonaConfig, MonaLayer

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCHS = ["swin", "vit"]
NUM_BLOCKS = {"swin": 4, "vit": 2}  # blocks of the tiny models in conftest.py
# Small bottleneck keeps every test fast; the kernels are the paper's.
INNER_DIM = 8


def mona_config(**kwargs) -> MonaConfig:
    kwargs.setdefault("inner_dim", INNER_DIM)
    return MonaConfig(**kwargs)


def randomize_adapter(model: nn.Module, adapter_name: str, seed: int, scale: float = 0.1) -> None:
    """Add seeded noise to every Mona and modules_to_save parameter of one adapter.

    Freshly initialised Monas are nearly the identity (``gamma`` is 1e-6) and a fresh modules_to_save copy equals the
    base head, so a save/load path that silently dropped them would still pass without this.
    """
    generator = torch.Generator().manual_seed(seed)
    touched = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            is_adapter = ".mona_" in name or ".modules_to_save." in name
            if is_adapter and f".{adapter_name}." in name:
                param.add_(scale * torch.randn(param.shape, generator=generator).to(param.dtype))
                touched += 1
    assert touched > 0, f"no parameter of adapter {adapter_name!r} found"


def logits(model: nn.Module, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=pixel_values, **kwargs).logits


def assert_differs(a: torch.Tensor, b: torch.Tensor, at_least: float = 1e-3) -> None:
    difference = (a - b).abs().max().item()
    assert difference > at_least, f"outputs should differ, max difference {difference}"


def adapter_parameters(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    return {
        name: param.detach().clone()
        for name, param in model.named_parameters()
        if (".mona_" in name or ".modules_to_save." in name) and f".{adapter_name}." in name
    }


@pytest.fixture
def adapted(tiny_model, tiny_pixel_values):
    """Factory: ``adapted(arch)`` -> (base logits, eval-mode PeftModel with a randomized adapter 'default', x)."""

    def build(arch: str, seed: int = 0, adapter_seed: int = 11, **config_kwargs):
        config_kwargs.setdefault("modules_to_save", ["classifier"])
        base = tiny_model(arch, seed=seed)
        x = tiny_pixel_values(batch=2)
        base_logits = logits(base, x)
        torch.manual_seed(adapter_seed)
        model = get_peft_model(base, mona_config(**config_kwargs)).eval()
        randomize_adapter(model, "default", seed=adapter_seed)
        return base_logits, model, x

    return build


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------------


def test_save_pretrained_writes_only_adapter_files_and_keys(adapted, tmp_path):
    for arch in ARCHS:
        _, model, _ = adapted(arch)
        out = tmp_path / arch
        model.save_pretrained(out)
        assert sorted(os.listdir(out)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
        state = load_file(out / "adapter_model.safetensors")
        assert state, "empty adapter checkpoint"
        mona_keys = [k for k in state if ".mona_" in k]
        head_keys = sorted(k for k in state if ".classifier." in k)
        assert sorted(mona_keys + head_keys) == sorted(state), "keys other than mona_* and the head were saved"
        assert head_keys == ["base_model.model.classifier.bias", "base_model.model.classifier.weight"]
        # adapter name stripped, every Mona parameter saved once
        expected = {
            name.replace(".default.", ".")
            for name, _ in model.named_parameters()
            if ".mona_" in name and ".default." in name
        }
        assert set(mona_keys) == expected
        assert not any(".default" in k or "base_layer" in k for k in state)
        config = json.loads((out / "adapter_config.json").read_text())
        assert config["peft_type"] == "MONA" and config["inner_dim"] == INNER_DIM


def test_peft_config_and_auto_peft_model_from_pretrained(tiny_swin, tiny_pixel_values, tmp_path):
    x = tiny_pixel_values()
    tiny_swin(seed=2).save_pretrained(tmp_path / "base")
    base = AutoModelForImageClassification.from_pretrained(tmp_path / "base")
    config = mona_config(modules_to_save=["classifier"], kernel_sizes=(3, 5), prefix_tokens="skip", dropout=0.0)
    torch.manual_seed(0)
    model = get_peft_model(base, config).eval()
    randomize_adapter(model, "default", seed=1)
    model.save_pretrained(tmp_path / "adapter")
    expected = logits(model, x)

    loaded_config = PeftConfig.from_pretrained(tmp_path / "adapter")
    assert isinstance(loaded_config, MonaConfig)
    assert loaded_config.peft_type == "MONA"
    assert loaded_config.inner_dim == INNER_DIM
    assert loaded_config.kernel_sizes == (3, 5)
    assert loaded_config.prefix_tokens == "skip"
    assert loaded_config.dropout == 0.0
    assert loaded_config.modules_to_save == ["classifier"]
    assert Path(loaded_config.base_model_name_or_path) == tmp_path / "base"

    auto = AutoPeftModel.from_pretrained(tmp_path / "adapter").eval()
    assert isinstance(auto, PeftModel)
    assert isinstance(auto.peft_config["default"], MonaConfig)
    assert any(isinstance(m, MonaLayer) for m in auto.modules())
    torch.testing.assert_close(logits(auto, x), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_inject_adapter_in_model_matches_get_peft_model(arch, tiny_model, tiny_pixel_values):
    x = tiny_pixel_values()
    reference_base = tiny_model(arch)
    torch.manual_seed(9)
    reference = get_peft_model(reference_base, mona_config()).eval()

    plain = tiny_model(arch)
    base_logits = logits(plain, x)
    torch.manual_seed(9)
    injected = inject_adapter_in_model(mona_config(), plain)
    assert injected is plain and not isinstance(injected, PeftModel)
    assert sum(isinstance(m, MonaLayer) for m in injected.modules()) == NUM_BLOCKS[arch]
    assert_differs(logits(injected, x), base_logits)
    torch.testing.assert_close(logits(injected, x), logits(reference, x), rtol=0, atol=0)

    injected_state = get_peft_model_state_dict(injected)
    reference_state = get_peft_model_state_dict(reference)
    assert injected_state and all(".mona_" in k for k in injected_state)
    assert {f"base_model.model.{k}" for k in injected_state} == set(reference_state)


@pytest.mark.parametrize("arch", ARCHS)
def test_get_and_set_peft_model_state_dict_round_trip(arch, adapted, tiny_model):
    _, source, x = adapted(arch, adapter_seed=1)
    state = get_peft_model_state_dict(source)
    target_base = tiny_model(arch)
    torch.manual_seed(2)
    target = get_peft_model(target_base, mona_config(modules_to_save=["classifier"])).eval()
    assert_differs(logits(target, x), logits(source, x))
    result = set_peft_model_state_dict(target, state)
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if ".mona_" in k or "modules_to_save" in k]
    torch.testing.assert_close(logits(target, x), logits(source, x), rtol=0, atol=0)
    for key, value in get_peft_model_state_dict(target).items():
        assert torch.equal(value, state[key]), key


# --------------------------------------------------------------------------------------------------------------------
# Several adapters
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_add_set_disable_delete_adapter(arch, adapted):
    base_logits, model, x = adapted(arch)
    out_default = logits(model, x)
    assert_differs(out_default, base_logits)

    torch.manual_seed(21)
    model.add_adapter("other", mona_config(modules_to_save=["classifier"]))
    randomize_adapter(model, "other", seed=21)
    assert model.active_adapters == ["default"]
    torch.testing.assert_close(logits(model, x), out_default, rtol=0, atol=0)  # adding does not activate

    model.set_adapter("other")
    out_other = logits(model, x)
    assert_differs(out_other, out_default)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".other." in n for n in trainable)

    with model.disable_adapter():
        torch.testing.assert_close(logits(model, x), base_logits, rtol=0, atol=0)
    torch.testing.assert_close(logits(model, x), out_other, rtol=0, atol=0)

    model.set_adapter("default")
    torch.testing.assert_close(logits(model, x), out_default, rtol=0, atol=0)

    model.delete_adapter("other")
    assert set(model.peft_config) == {"default"}
    assert not [n for n, _ in model.named_parameters() if ".other." in n]
    for module in model.modules():
        if isinstance(module, MonaLayer):
            assert "other" not in module.mona_prefix_tokens
    torch.testing.assert_close(logits(model, x), out_default, rtol=0, atol=0)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, x), base_logits, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:Adapter name .* should not be contained in the prefix")
def test_adapter_names_that_are_substrings_save_and_load_independently(tiny_swin, tiny_pixel_values, tmp_path):
    x = tiny_pixel_values()
    base = tiny_swin()
    torch.manual_seed(0)
    model = get_peft_model(base, mona_config(modules_to_save=["classifier"]), adapter_name="a").eval()
    randomize_adapter(model, "a", seed=1)
    torch.manual_seed(0)
    model.add_adapter("aa", mona_config(modules_to_save=["classifier"]))
    randomize_adapter(model, "aa", seed=2)
    expected = {}
    for name in ("a", "aa"):
        model.set_adapter(name)
        expected[name] = logits(model, x)
    assert_differs(expected["a"], expected["aa"])
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "a", "aa"]

    saved = {name: load_file(tmp_path / name / "adapter_model.safetensors") for name in ("a", "aa")}
    assert saved["a"].keys() == saved["aa"].keys()
    for name in ("a", "aa"):
        own = {k.replace(f".{name}.", "."): v for k, v in adapter_parameters(model, name).items()}
        own = {k.replace(".modules_to_save.", "."): v for k, v in own.items()}
        assert own.keys() == saved[name].keys()
        for key, value in own.items():
            assert torch.equal(saved[name][key], value), (name, key)

    reloaded = PeftModel.from_pretrained(tiny_swin(), tmp_path / "aa", adapter_name="aa").eval()
    reloaded.load_adapter(tmp_path / "a", adapter_name="a")
    for name in ("a", "aa"):
        reloaded.set_adapter(name)
        torch.testing.assert_close(logits(reloaded, x), expected[name], rtol=0, atol=0)

    # an adapter loads under any other name
    reloaded.load_adapter(tmp_path / "aa", adapter_name="renamed")
    reloaded.set_adapter("renamed")
    torch.testing.assert_close(logits(reloaded, x), expected["aa"], rtol=0, atol=0)
    renamed = PeftModel.from_pretrained(tiny_swin(), tmp_path / "a", adapter_name="x").eval()
    assert set(renamed.peft_config) == {"x"}
    torch.testing.assert_close(logits(renamed, x), expected["a"], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------------------
# Unload and merge
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("with_head", [False, True], ids=["backbone_only", "modules_to_save"])
def test_unload_returns_the_exact_base_model(arch, with_head, adapted, tiny_model):
    reference = tiny_model(arch)
    base_logits, model, x = adapted(arch, modules_to_save=["classifier"] if with_head else None)
    model.add_adapter("other", mona_config(modules_to_save=["classifier"] if with_head else None))
    classifier = model.base_model.model.classifier
    trained_head = classifier.modules_to_save["default"].state_dict() if with_head else classifier.state_dict()
    trained_head = {k: v.clone() for k, v in trained_head.items()}
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model(pixel_values=x, labels=torch.tensor([0, 1])).loss.backward()  # exercise every hook once
    model.gradient_checkpointing_disable()
    model.eval()
    hooked = [m for n, m in model.named_modules() if n.endswith("base_layer.layernorm_after")]
    assert len(hooked) == NUM_BLOCKS[arch] and all(m._forward_pre_hooks for m in hooked)

    unloaded = model.unload()
    assert type(unloaded) is type(reference)
    reference_modules = dict(reference.named_modules())
    unloaded_modules = dict(unloaded.named_modules())
    assert unloaded_modules.keys() == reference_modules.keys()
    for name, module in unloaded_modules.items():
        assert type(module) is type(reference_modules[name]), name
        hooks = (module._forward_pre_hooks, module._forward_hooks, module._backward_hooks)
        assert not any(hooks), f"leftover hook on {name or 'the model'} ({type(module).__name__})"
    consumers = [m for n, m in unloaded.named_modules() if n.endswith("layernorm_after")]
    assert len(consumers) == NUM_BLOCKS[arch] and not any(m._forward_pre_hooks for m in consumers)
    assert not hasattr(unloaded, "peft_config")

    if with_head:
        # PEFT's convention: unload() keeps the active adapter's trained copy of a modules_to_save module.
        head = unloaded.classifier.state_dict()
        assert head.keys() == trained_head.keys() and all(torch.equal(head[k], trained_head[k]) for k in head)
        assert_differs(head["weight"], reference.classifier.weight.detach())
        reference.classifier.load_state_dict(trained_head)
    else:
        torch.testing.assert_close(logits(unloaded, x), base_logits, rtol=0, atol=0)
    assert unloaded.state_dict().keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(unloaded.state_dict()[key], value), key
    torch.testing.assert_close(logits(unloaded, x), logits(reference, x), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("autocast", [True, False])
def test_autocast_adapter_dtype_with_bfloat16_base(arch, autocast, tiny_model, tiny_pixel_values):
    x = tiny_pixel_values()
    float_base = tiny_model(arch)
    float_base_logits = logits(float_base, x)
    torch.manual_seed(4)
    float_model = get_peft_model(float_base, mona_config(modules_to_save=["classifier"])).eval()
    randomize_adapter(float_model, "default", seed=3)
    expected = logits(float_model, x)
    assert_differs(expected, float_base_logits, at_least=0.1)

    base = tiny_model(arch).to(torch.bfloat16)
    torch.manual_seed(4)
    model = get_peft_model(base, mona_config(modules_to_save=["classifier"]), autocast_adapter_dtype=autocast)
    randomize_adapter(model, "default", seed=3)
    mona_dtypes = {p.dtype for n, p in model.named_parameters() if ".mona_" in n}
    assert mona_dtypes == ({torch.float32} if autocast else {torch.bfloat16})
    other_dtypes = {p.dtype for n, p in model.named_parameters() if ".mona_" not in n}
    assert other_dtypes == {torch.bfloat16}

    out = logits(model.eval(), x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    # the same function as the float32 model up to bfloat16 rounding (about 5e-3 here; logits are about 0.7)
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=0.03)

    model.train()
    loss = model(pixel_values=x.to(torch.bfloat16), labels=torch.tensor([0, 2])).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for n, p in model.named_parameters() if ".mona_" in n]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# --------------------------------------------------------------------------------------------------------------------
# Hidden states
# --------------------------------------------------------------------------------------------------------------------


def is_trained(name: str) -> bool:
    return ".mona_" in name or ".modules_to_save." in name


def test_output_hidden_states_are_the_adapted_stream(adapted):
    # transformers records ViT's hidden states with a hook on each ViTLayer, i.e. inside Mona's wrapper; what it
    # returns (and what backbones build feature maps from) must include Mona's additions.
    _, model, x = adapted("vit")
    block_outputs = []

    def record(module, args, output):
        block_outputs.append(output[0] if isinstance(output, tuple) else output)

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, MonaLayer)]
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
        selected = model(pixel_values=x, output_hidden_states=[-1])
    for handle in handles:
        handle.remove()
    num_blocks = NUM_BLOCKS["vit"]
    assert len(out.hidden_states) == num_blocks + 1 and len(block_outputs) == 2 * num_blocks  # two forward passes
    for recorded, block_output in zip(out.hidden_states[1:], block_outputs[:num_blocks], strict=True):
        torch.testing.assert_close(recorded, block_output, rtol=0, atol=0)
    torch.testing.assert_close(selected.hidden_states[-1], block_outputs[-1], rtol=0, atol=0)
    with model.disable_adapter(), torch.no_grad():
        base_states = model(pixel_values=x, output_hidden_states=True).hidden_states
    assert_differs(out.hidden_states[-1], base_states[-1])


# --------------------------------------------------------------------------------------------------------------------
# HF Trainer
# --------------------------------------------------------------------------------------------------------------------


class TinyImageDataset(torch.utils.data.Dataset):
    def __init__(self, size: int = 8, image_size: int = 32, num_labels: int = 3) -> None:
        generator = torch.Generator().manual_seed(0)
        self.pixel_values = torch.randn(size, 3, image_size, image_size, generator=generator)
        self.labels = torch.randint(0, num_labels, (size,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


def test_hf_trainer_trains_only_the_adapter(tiny_swin, tmp_path):
    base = tiny_swin()
    torch.manual_seed(0)
    model = get_peft_model(base, mona_config(modules_to_save=["classifier"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        remove_unused_columns=False,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=TinyImageDataset())
    result = trainer.train()
    assert result.global_step == 3
    assert math.isfinite(result.training_loss)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    trained = {n for n in before if is_trained(n)}
    assert trained, "nothing to train"
    assert not trained - changed, f"adapter parameters that did not train: {sorted(trained - changed)[:5]}"
    assert not changed - trained, f"frozen parameters that changed: {sorted(changed - trained)[:5]}"


# --------------------------------------------------------------------------------------------------------------------
# FSDP-friendly layout
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_trainable_parameters_live_in_leaf_modules(arch, adapted):
    _, model, _ = adapted(arch)
    model.add_adapter("other", mona_config(modules_to_save=["classifier"]))
    model.set_adapter("other")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for module in model.modules():
        if isinstance(module, (nn.ParameterDict, nn.ParameterList)):
            assert not any(p.requires_grad for p in module.parameters()), type(module).__name__
    for name in trainable:
        owner_name, _, _ = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        assert not list(owner.children()), f"{name} lives in {type(owner).__name__}, which has submodules"
        assert not isinstance(owner, (nn.ParameterDict, nn.ParameterList)), name


# --------------------------------------------------------------------------------------------------------------------
# Mixed-adapter batches
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.filterwarnings("ignore:Adapter name .* should not be contained in the prefix")
def test_mixed_adapter_batch_matches_each_adapter_alone(arch, tiny_model, tiny_pixel_values):
    x = tiny_pixel_values(batch=4)
    base_logits = logits(tiny_model(arch), x)
    base = tiny_model(arch)
    torch.manual_seed(0)
    model = get_peft_model(base, mona_config(modules_to_save=["classifier"]), adapter_name="a")
    randomize_adapter(model, "a", seed=1)
    model.add_adapter("b", mona_config(modules_to_save=["classifier"], prefix_tokens="skip"))
    randomize_adapter(model, "b", seed=2)
    model.eval()

    alone = {}
    for name in ("a", "b"):
        model.set_adapter(name)
        alone[name] = logits(model, x)
    with model.disable_adapter():
        alone["__base__"] = logits(model, x)
    torch.testing.assert_close(alone["__base__"], base_logits, rtol=0, atol=0)
    assert_differs(alone["a"], alone["b"])
    assert_differs(alone["a"], alone["__base__"])

    routing = ["a", "__base__", "b", "a"]
    model.set_adapter("b")  # the active adapter must not leak into routed rows
    mixed = logits(model, x, adapter_names=routing)
    for row, name in enumerate(routing):
        torch.testing.assert_close(mixed[row], alone[name][row], rtol=0, atol=1e-5, msg=f"row {row} ({name})")
    # one row at a time gives the same
    for row, name in enumerate(routing):
        single = logits(model, x[row : row + 1], adapter_names=[name])
        torch.testing.assert_close(single[0], alone[name][row], rtol=0, atol=1e-5, msg=f"row {row} ({name})")

    # the routing hooks are gone afterwards
    routed = [m for m in model.modules() if isinstance(m, (MonaLayer, ModulesToSaveWrapper))]
    assert len(routed) == NUM_BLOCKS[arch] + 1 and not any(m._forward_pre_hooks for m in routed)
    torch.testing.assert_close(logits(model, x), alone["b"], rtol=0, atol=0)

    with pytest.raises(ValueError, match="unknown|Unknown"):
        logits(model, x, adapter_names=["a", "nope", "b", "a"])
    model.train()
    with pytest.raises(ValueError, match="eval"):
        model(pixel_values=x, adapter_names=routing)
