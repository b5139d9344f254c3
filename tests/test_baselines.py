"""The papers' baselines behind ``--method``: exactly what each one trains on the tiny Swin and ViT, gradients only
there, the Houlsby adapter and AdaptFormer as PEFT methods (fresh-process reload, disable, merge, unload, several
adapters, mixed batches, every architecture), and short training-script runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf
from conftest import TINY_MODELS, TINY_NUM_BLOCKS, WITHOUT_CLASSIFIER, build_tiny_model
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn

import mona_peft
from mona_peft import AdaptFormerConfig, AdaptFormerLayer, HoulsbyConfig, HoulsbyLayer
from mona_peft.tasks.image_classification import main
from mona_peft.tuners.architectures import head_modules
from mona_peft.tuners.methods import build_method, count_parameters, is_adapter_parameter
from mona_peft.tuners.registry import methods

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAD = ["classifier"]
HEAD_PARAMS = 3 * 32 + 3  # 3 labels on the tiny models' 32-wide final features
# Width of each block of the tiny models in conftest.py, in forward order.
WIDTHS = {"swin": [16, 16, 32, 32], "vit": [32, 32]}
LAST_BLOCK = {"swin": "swin.encoder.layers.1.blocks.1", "vit": "vit.layers.1"}
# Module names inside a block, as in transformers 5.x.
HOULSBY_SITES = {"swin": ("attention.o_proj", "mlp.fc2"), "vit": ("attention.o_proj", "mlp.fc2")}
PEFT_ADAPTERS = {"houlsby": (HoulsbyConfig, HoulsbyLayer), "adaptformer": (AdaptFormerConfig, AdaptFormerLayer)}


def trainable(model: nn.Module) -> dict[str, int]:
    return {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}


def logits(model: nn.Module, x: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=x, **kwargs).logits


def randomize(model: nn.Module, prefix: str, adapter: str = "default", seed: int = 0, head: bool = True) -> None:
    """Noise on one adapter's parameters, so that a lost adapter (or an identity-initialised one) cannot pass."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if (f".{prefix}" in name or (head and ".modules_to_save." in name)) and f".{adapter}." in name:
                p.add_(0.1 * torch.randn(p.shape, generator=generator))


def peft_head(names) -> set[str]:
    return {n for n in names if ".classifier.modules_to_save.default." in n}


# --------------------------------------------------------------------------------------------------------------------
# What each method trains
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["swin", "vit"])
def test_each_method_trains_exactly_its_parameters(arch, tiny_model):
    base_params = dict(tiny_model(arch).named_parameters())
    widths = WIDTHS[arch]
    layer_norms = {n for n, m in tiny_model(arch).named_modules() if isinstance(m, nn.LayerNorm)}
    assert set(methods()) >= {"full", "linear", "bitfit", "ln_tuning", "partial1", "adapter", "lora", "adaptformer"}

    full = build_method(tiny_model(arch), "full", HEAD)
    assert trainable(full) == {n: p.numel() for n, p in base_params.items()}

    assert trainable(build_method(tiny_model(arch), "linear", HEAD)) == {"classifier.weight": 96, "classifier.bias": 3}

    bitfit = trainable(build_method(tiny_model(arch), "bitfit", HEAD))
    biases = {n for n in base_params if n.endswith(".bias")}
    assert set(bitfit) == biases | {"classifier.weight"}
    assert {f"{norm}.bias" for norm in layer_norms} <= set(bitfit)  # LayerNorm biases are bias terms too
    assert not any("relative_position_bias" in n for n in bitfit)  # Swin's position bias table is not a bias term

    partial = trainable(build_method(tiny_model(arch), "partial1", HEAD))
    last = LAST_BLOCK[arch]
    assert set(partial) == {n for n in base_params if n.startswith(f"{last}.")} | {
        "classifier.weight",
        "classifier.bias",
    }
    assert sum(partial.values()) == sum(p.numel() for n, p in base_params.items() if n.startswith(f"{last}.")) + 99

    ln = build_method(tiny_model(arch), "ln_tuning", HEAD)
    wrapped = {n.removeprefix("base_model.model.") for n, m in ln.named_modules() if hasattr(m, "ln_tuning_layers")}
    assert wrapped == layer_norms  # every LayerNorm of the backbone, none else
    ln_params = sum(p.numel() for n, p in base_params.items() if n.rpartition(".")[0] in layer_norms)
    assert sum(trainable(ln).values()) == ln_params + HEAD_PARAMS

    expected_counts = {
        "adapter": sum(2 * (2 * c * 64 + 64 + c) for c in widths),
        "adaptformer": sum(2 * c * 64 + 64 + c for c in widths),
        "lora": sum(2 * 8 * (c + c) for c in widths),  # rank 8 on query and value
        "mona": sum(2 * (133 * c + 9728) for c in widths),
    }
    markers = {"adapter": ".houlsby_", "adaptformer": ".adaptformer_", "lora": ".lora_", "mona": ".mona_"}
    for method, count in expected_counts.items():
        model = build_method(tiny_model(arch), method, HEAD)
        params = trainable(model)
        head = peft_head(params)
        assert len(head) == 2 and sum(params[n] for n in head) == HEAD_PARAMS, method
        added = set(params) - head
        assert all(markers[method] in n for n in added), method
        assert sum(params[n] for n in added) == count, method
        assert {n for n in params if is_adapter_parameter(n)} == added, method  # they get --adapter_lr_scale
    for method in ("full", "linear", "bitfit", "partial1"):
        assert not any(is_adapter_parameter(n) for n in trainable(build_method(tiny_model(arch), method, HEAD)))

    houlsby = build_method(tiny_model(arch), "adapter", HEAD)
    sites = sorted(
        n.removeprefix("base_model.model.") for n, m in houlsby.named_modules() if isinstance(m, HoulsbyLayer)
    )
    blocks = [n for n, _ in mona_peft.tuners.architectures.find_blocks(tiny_model(arch))]
    assert sites == sorted(f"{b}.{s}" for b in blocks for s in HOULSBY_SITES[arch])
    lora = build_method(tiny_model(arch), "lora", HEAD)
    lora_sites = sorted(n.removeprefix("base_model.model.") for n, m in lora.named_modules() if hasattr(m, "lora_A"))
    assert lora_sites == sorted(f"{b}.attention.{p}_proj" for b in blocks for p in "qv")


@pytest.mark.parametrize("arch", ["swin", "vit"])
def test_gradients_reach_only_the_trainable_parameters(arch, tiny_model, tiny_pixel_values):
    x, labels = tiny_pixel_values(batch=2), torch.tensor([0, 2])
    for method in ("full", "linear", "bitfit", "ln_tuning", "partial1", "adapter", "lora", "adaptformer"):
        model = build_method(tiny_model(arch), method, HEAD).train()
        model(pixel_values=x, labels=labels).loss.backward()
        for name, p in model.named_parameters():
            assert (p.grad is not None) == p.requires_grad, f"{method}: {name}"
        head_grads = [p.grad for n, p in model.named_parameters() if "classifier" in n and p.requires_grad]
        assert head_grads and all(g.abs().sum() > 0 for g in head_grads), method


def test_unknown_method_and_missing_head_are_refused(tiny_swin):
    with pytest.raises(ValueError, match="Unknown method 'houlsby'; available: adapter, adaptformer, bitfit"):
        build_method(tiny_swin(), "houlsby", HEAD)
    with pytest.raises(ValueError, match="no head module named \\['head'\\]"):
        build_method(tiny_swin(), "linear", ["head"])


# --------------------------------------------------------------------------------------------------------------------
# Houlsby and AdaptFormer as PEFT methods
# --------------------------------------------------------------------------------------------------------------------


_FRESH_PROCESS_RELOAD = """
import sys
import torch
import mona_peft  # noqa: F401  (registers the methods with PEFT)
from mona_peft.tuners.bottleneck import BottleneckLayer
from peft import PeftModel
from transformers import AutoModelForImageClassification

for base_dir, adapter_dir, x_path, out_path in zip(*[iter(sys.argv[1:])] * 4):
    model = PeftModel.from_pretrained(AutoModelForImageClassification.from_pretrained(base_dir), adapter_dir).eval()
    sizes = sorted({m.inner_dim("default") for m in model.modules() if isinstance(m, BottleneckLayer)})
    with torch.no_grad():
        torch.save({"logits": model(pixel_values=torch.load(x_path)).logits, "sizes": sizes}, out_path)
"""


def test_save_and_reload_in_a_fresh_process(tiny_model, tiny_pixel_values, tmp_path):
    x = tiny_pixel_values(batch=2)
    torch.save(x, tmp_path / "x.pt")
    cases, expected = [], {}
    for arch in ("swin", "vit"):
        for method, (config_cls, _) in PEFT_ADAPTERS.items():
            base = tiny_model(arch)
            base.save_pretrained(tmp_path / f"base-{arch}")
            # Per-module widths (as MiMi leaves them) must come back from the config alone.
            config = config_cls(inner_dim=16, inner_dim_pattern={r"layers\.1\..*": 4}, modules_to_save=HEAD)
            model = get_peft_model(base, config).eval()
            randomize(model, method)
            name = f"{arch}-{method}"
            model.save_pretrained(tmp_path / name)
            state = load_file(tmp_path / name / "adapter_model.safetensors")
            assert all(f".{method}_" in k or ".classifier." in k for k in state) and not any(
                ".default" in k for k in state
            )
            assert json.loads((tmp_path / name / "adapter_config.json").read_text())["peft_type"] == method.upper()
            expected[name] = logits(model, x)
            cases += [str(tmp_path / f"base-{arch}"), str(tmp_path / name), str(tmp_path / "x.pt")]
            cases.append(str(tmp_path / f"{name}.out"))
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS_RELOAD, *cases], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name, reference in expected.items():
        result = torch.load(tmp_path / f"{name}.out")
        assert torch.equal(result["logits"], reference), name
        assert result["sizes"] == [4, 16], name


@pytest.mark.parametrize("method", sorted(PEFT_ADAPTERS))
@pytest.mark.parametrize("arch", ["swin", "vit"])
def test_disable_identity_merge_unload(method, arch, tiny_model, tiny_pixel_values):
    config_cls, layer_cls = PEFT_ADAPTERS[method]
    x = tiny_pixel_values(batch=2)
    base = tiny_model(arch)
    plain = logits(base, x)
    # Identity initialisation: Houlsby's option, AdaptFormer's default (the official "lora" init).
    identity = {"houlsby": {"init_weights": "identity"}, "adaptformer": {}}[method]
    assert torch.equal(logits(get_peft_model(tiny_model(arch), config_cls(**identity)).eval(), x), plain)
    # The default Houlsby init is near, not exactly, the identity; AdaptFormer's "bert" init is not the identity.
    other = {"houlsby": {}, "adaptformer": {"init_weights": "bert"}}[method]
    assert 0 < (logits(get_peft_model(tiny_model(arch), config_cls(**other)).eval(), x) - plain).abs().max()

    model = get_peft_model(base, config_cls(modules_to_save=HEAD)).eval()
    randomize(model, method)
    adapted = logits(model, x)
    assert (adapted - plain).abs().max() > 1e-3
    with model.disable_adapter():
        assert torch.equal(logits(model, x), plain)
    assert torch.equal(logits(model, x), adapted)

    with pytest.raises(NotImplementedError, match="cannot be merged.*non-linearity"):
        model.merge_and_unload()
    with pytest.raises(NotImplementedError, match="cannot be merged"):
        model.merge_adapter()
    assert torch.equal(logits(model, x), adapted)  # nothing half-merged

    reference = tiny_model(arch)
    unloaded = model.unload()
    assert type(unloaded) is type(reference) and not hasattr(unloaded, "peft_config")
    assert not any(isinstance(m, layer_cls) for m in unloaded.modules())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in unloaded.modules())
    # PEFT's convention: unload() keeps the trained copy of the head; the backbone is the base, bit for bit.
    reference.classifier.load_state_dict(unloaded.classifier.state_dict())
    assert unloaded.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in unloaded.state_dict().items())
    assert torch.equal(logits(unloaded, x), logits(reference, x))


@pytest.mark.parametrize("method", sorted(PEFT_ADAPTERS))
def test_several_adapters_and_mixed_batches(method, tiny_swin, tiny_pixel_values, tmp_path):
    config_cls, _ = PEFT_ADAPTERS[method]
    x = tiny_pixel_values(batch=3)
    plain = logits(tiny_swin(), x)
    model = get_peft_model(tiny_swin(), config_cls(modules_to_save=HEAD)).eval()
    model.add_adapter("other", config_cls(inner_dim=8, modules_to_save=HEAD))
    randomize(model, method, "default", seed=1)
    randomize(model, method, "other", seed=2)
    first = logits(model, x)
    model.set_adapter("other")
    second = logits(model, x)
    assert (first - second).abs().max() > 1e-3
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".default." in n)  # inactive: frozen
    mixed = logits(model, x, adapter_names=["default", "__base__", "other"])
    torch.testing.assert_close(mixed, torch.stack([first[0], plain[1], second[2]]))
    with pytest.raises(ValueError, match="Unknown adapter name"):
        logits(model, x, adapter_names=["default", "nope", "other"])
    # Reloaded under another name, the second adapter computes the same function.
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_swin(), tmp_path / "other", adapter_name="renamed").eval()
    torch.testing.assert_close(logits(reloaded, x), second)
    model.delete_adapter("default")
    assert not any(".default." in n for n, _ in model.named_parameters())
    torch.testing.assert_close(logits(model, x), second)


@pytest.mark.parametrize("use_reentrant", [True, False], ids=["reentrant", "non_reentrant"])
def test_gradient_checkpointing_gives_the_same_gradients(use_reentrant, tiny_model, tiny_pixel_values):
    x, labels = tiny_pixel_values(batch=2), torch.tensor([0, 2])
    for arch in ("swin", "vit"):
        for method, (config_cls, _) in PEFT_ADAPTERS.items():
            grads = []
            for checkpointing in (False, True):
                config = config_cls(modules_to_save=HEAD, **({"dropout": 0.0} if method == "adaptformer" else {}))
                model = get_peft_model(tiny_model(arch), config).train()
                randomize(model, method)  # AdaptFormer's zero up projection would give its down projection no gradient
                if checkpointing:
                    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
                model(pixel_values=x, labels=labels).loss.backward()
                grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
            assert all(g is not None and g.abs().sum() > 0 for g in grads[1].values()), f"{arch} {method}"
            for name, grad in grads[0].items():
                torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=f"{arch} {method} {name}")


#: LayerNorms the tiny classifiers never read, which LN tuning leaves out: CLIP's normalises the pooled CLS (its
#: classifier averages the patch tokens), SigLIP's attention-pooling head is not used by its classifier.
UNREAD_NORMS = {"clip_vision_model": ("post_layernorm",), "siglip_vision_model": ("head.layernorm",)}


def test_every_architecture_has_a_tiny_model():
    assert set(TINY_MODELS) == set(mona_peft.supported_model_types()) - WITHOUT_CLASSIFIER


@pytest.mark.parametrize("arch", sorted(TINY_MODELS))
def test_every_architecture_gets_every_baseline(arch, tiny_pixel_values):
    x = tiny_pixel_values(batch=2)
    base = build_tiny_model(arch)
    plain = logits(base, x)
    head = head_modules(base)
    num_blocks = TINY_NUM_BLOCKS[arch]
    for method in ("ln_tuning", "partial1", "adapter", "lora", "adaptformer"):
        model = build_method(build_tiny_model(arch), method, head)
        trained, _ = count_parameters(model)
        assert trained > HEAD_PARAMS, f"{arch} {method}"
        if method in ("adapter", "adaptformer"):
            layer_cls = HoulsbyLayer if method == "adapter" else AdaptFormerLayer
            layers = [m for m in model.modules() if isinstance(m, layer_cls)]
            # the Houlsby adapter follows the attention and the MLP; a block without attention has the second
            attention = mona_peft.SUPPORTED_ARCHITECTURES[arch].attention_output is not None
            per_block = 1 + (method == "adapter" and attention)
            assert len(layers) == num_blocks * per_block, f"{arch} {method}"
            randomize(model, "houlsby_" if method == "adapter" else "adaptformer_", head=False)
            assert (logits(model, x) - plain).abs().max() > 1e-4, f"{arch} {method}"
            assert torch.equal(logits(model.unload(), x), plain), f"{arch} {method}"
        elif method == "lora":
            targets = len(mona_peft.SUPPORTED_ARCHITECTURES[arch].lora_targets)  # 1 where q, k, v are one Linear
            assert sum(hasattr(m, "lora_A") for m in model.modules()) == targets * num_blocks, arch
        elif method == "ln_tuning":
            unread = UNREAD_NORMS.get(arch, ())
            norms = sum(  # the head (timm's ConvNeXt normalises in it) trains in full
                isinstance(m, nn.LayerNorm) and not n.endswith(unread) and not n.startswith(f"{head[0]}.")
                for n, m in build_tiny_model(arch).named_modules()
            )
            assert sum(hasattr(m, "ln_tuning_layers") for m in model.modules()) == norms, arch


def test_swinv2_adaptformer_reads_the_mlp_input(tiny_pixel_values):
    """Swin v2's MLP is two modules: the adapter wraps `output` and reads `intermediate`'s input."""
    model = get_peft_model(build_tiny_model("swinv2"), AdaptFormerConfig(init_weights="bert")).eval()
    layer = model.base_model.model.swinv2.encoder.layers[0].blocks[0].output
    seen = {}
    block = model.base_model.model.swinv2.encoder.layers[0].blocks[0]
    block.intermediate.register_forward_pre_hook(lambda m, args: seen.update(mlp_in=args[0]))
    layer.base_layer.register_forward_hook(lambda m, args, out: seen.update(mlp_out=out))
    layer.register_forward_hook(lambda m, args, out: seen.update(adapted=out))
    logits(model, tiny_pixel_values(batch=2))
    down, up = layer.adaptformer_down["default"], layer.adaptformer_up["default"]
    expected = seen["mlp_out"] + 0.1 * up(torch.relu(down(seen["mlp_in"])))
    torch.testing.assert_close(seen["adapted"], expected)
    assert down.in_features == 16 and up.out_features == 16


def test_configs_refuse_bad_values():
    with pytest.raises(ValueError, match="inner_dim must be a positive integer"):
        HoulsbyConfig(inner_dim=0)
    with pytest.raises(ValueError, match="inner_dim_pattern widths must be positive"):
        AdaptFormerConfig(inner_dim_pattern={"mlp": 0})
    with pytest.raises(ValueError, match="init_weights must be 'houlsby' or 'identity'"):
        HoulsbyConfig(init_weights="lora")
    with pytest.raises(ValueError, match="activation must be one of"):
        HoulsbyConfig(activation="nope")
    with pytest.raises(ValueError, match="dropout must be in"):
        AdaptFormerConfig(dropout=1.0)


def test_wrong_target_is_refused(tiny_vit):
    with pytest.raises(ValueError, match="Houlsby adapter wraps Linear layers.*ViTMLP"):
        get_peft_model(tiny_vit(), HoulsbyConfig(target_modules=["mlp"]))


# --------------------------------------------------------------------------------------------------------------------
# The training script
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_swin(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-swin")
    build_tiny_model("swin").save_pretrained(path)
    processor = tf.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor.save_pretrained(path)
    return str(path)


def _run(model, out, method, *extra):
    return main(
        [
            "--model_name_or_path", model, "--output_dir", str(out), "--method", method, "--report_to", "none",
            "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "512", "--num_warmup_steps", "0",
            "--max_train_steps", "1", *extra,
        ]
    )  # fmt: skip


def test_training_script_with_a_peft_baseline(saved_swin, tmp_path):
    results = _run(saved_swin, tmp_path, "adapter")
    saved = json.loads((tmp_path / "all_results.json").read_text())
    assert saved["completed_steps"] == 1 and saved["trainable_params"] == results["trainable_params"]
    keys = load_file(tmp_path / "adapter_model.safetensors")
    assert keys and all(".houlsby_" in k or ".classifier." in k for k in keys)
    assert "Houlsby adapter" in (tmp_path / "README.md").read_text()


def test_training_script_with_a_full_model_baseline_saves_and_resumes(saved_swin, tmp_path):
    steps = ["--checkpointing_steps", "1", "--max_train_steps", "2", "--learning_rate", "0.05"]
    _run(saved_swin, tmp_path / "run", "bitfit", *steps)
    out = tmp_path / "run"
    assert json.loads((out / "all_results.json").read_text())["model_bytes"] > 0
    trained = tf.AutoModelForImageClassification.from_pretrained(out)
    base = tf.AutoModelForImageClassification.from_pretrained(saved_swin)
    changed = {n for n, p in trained.named_parameters() if not torch.equal(p, base.state_dict()[n])}
    assert changed and all(n.endswith(".bias") or n.startswith("classifier.") for n in changed)
    # Checkpoints hold only what bitfit trains; resuming from step 1 ends where the uninterrupted run did.
    checkpoint = load_file(out / "checkpoint-1" / "adapter" / "trainable_model.safetensors")
    assert set(checkpoint) == {n for n, _ in trained.named_parameters() if n.endswith(".bias")} | {"classifier.weight"}
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "run_args.json").write_bytes((out / "run_args.json").read_bytes())
    subprocess.run(["cp", "-r", str(out / "checkpoint-1"), str(resumed)], check=True)
    _run(saved_swin, resumed, "bitfit", *steps, "--resume_from_checkpoint", "latest")
    again = tf.AutoModelForImageClassification.from_pretrained(resumed)
    for name, p in trained.named_parameters():
        torch.testing.assert_close(again.state_dict()[name], p, rtol=1e-5, atol=1e-6)
