"""Nothing silent, nothing lost (issue 13, part B): strict adapter loading, config checks, loading without the import.

mona_peft's methods refuse an adapter that does not fit the model (another architecture, another depth, a tensor
missing or extra, a config edited away from its weights, a truncated file) with an error that names the problem,
where PEFT would only warn and run with randomly initialised adapter weights. LoRA keeps PEFT's own behaviour.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model, build_tiny_pixel_values
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from mona_peft import AdapterMismatchError, AdaptFormerConfig, HoulsbyConfig, MonaConfig, VPTConfig
from mona_peft.tuners.methods import load_trainable, save_trainable

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = "adapter_model.safetensors"

CONFIGS = {
    "mona": lambda: MonaConfig(modules_to_save=["classifier"]),
    "vpt": lambda: VPTConfig(num_prompts=2, deep=True, modules_to_save=["classifier"]),
    "houlsby": lambda: HoulsbyConfig(inner_dim=8, modules_to_save=["classifier"]),
    "adaptformer": lambda: AdaptFormerConfig(inner_dim=8, init_weights="bert", modules_to_save=["classifier"]),
}


def _saved(tmp_path: Path, config, model_type: str = "swin", **overrides) -> Path:
    model = get_peft_model(build_tiny_model(model_type, **overrides), config)
    folder = tmp_path / "adapter"
    model.save_pretrained(folder)
    return folder


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


# ------------------------------------------------------------------------------------------ case 4: strict loading


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_a_missing_tensor_is_refused_with_its_name(method, tmp_path):
    folder = _saved(tmp_path, CONFIGS[method]())
    weights = load_file(folder / WEIGHTS)
    dropped = next(key for key in sorted(weights) if f"{method}_" in key)
    del weights[dropped]
    save_file(weights, folder / WEIGHTS)
    with pytest.raises(AdapterMismatchError, match="missing") as error:
        PeftModel.from_pretrained(build_tiny_model("swin"), folder)
    # the model's key carries the adapter name; the module path is the checkpoint's
    assert dropped.rsplit(".", 1)[0].removeprefix("base_model.model.") in str(error.value)


def test_edited_kernel_sizes_are_refused_naming_the_dropped_kernel(tmp_path):
    folder = _saved(tmp_path, MonaConfig(modules_to_save=["classifier"]))
    _edit_config(folder, kernel_sizes=[3, 5])
    with pytest.raises(AdapterMismatchError, match=r"unexpected.*mona_attn_filter\.dw7_weight"):
        PeftModel.from_pretrained(build_tiny_model("swin"), folder)


def test_edited_inner_dim_is_refused_naming_the_shapes(tmp_path):
    folder = _saved(tmp_path, MonaConfig(modules_to_save=["classifier"]))
    _edit_config(folder, inner_dim=32)
    with pytest.raises(AdapterMismatchError, match=r"other shape.*mona_attn_down\.default\.weight: \(64, 16\)"):
        PeftModel.from_pretrained(build_tiny_model("swin"), folder)


def test_deeper_adapter_on_shallower_vit_is_refused(tmp_path):
    folder = _saved(tmp_path, MonaConfig(modules_to_save=["classifier"]), "vit", num_hidden_layers=3)
    with pytest.raises(AdapterMismatchError, match=r"unexpected.*vit\.layers\.2\.mona_"):
        PeftModel.from_pretrained(build_tiny_model("vit"), folder)


def test_shallower_adapter_on_deeper_swin_is_refused(tmp_path):
    folder = _saved(tmp_path, MonaConfig(modules_to_save=["classifier"]))
    with pytest.raises(AdapterMismatchError, match=r"missing.*layers\.1\.blocks\.2\.mona_"):
        PeftModel.from_pretrained(build_tiny_model("swin", depths=[2, 3]), folder)


@pytest.mark.parametrize("saved_on, loaded_on", [("vit", "deit"), ("swin", "vit")])
def test_adapter_of_another_architecture_names_both(saved_on, loaded_on, tmp_path):
    folder = _saved(tmp_path, MonaConfig(modules_to_save=["classifier"]), saved_on)
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_type"] == saved_on
    with pytest.raises(AdapterMismatchError, match=f"made for a '{saved_on}' backbone.*model is a '{loaded_on}'"):
        PeftModel.from_pretrained(build_tiny_model(loaded_on), folder)


def test_truncated_weights_file_is_named(tmp_path):
    folder = _saved(tmp_path, MonaConfig(modules_to_save=["classifier"]))
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterMismatchError, match=f"{folder / WEIGHTS} is not a complete safetensors file"):
        PeftModel.from_pretrained(build_tiny_model("swin"), folder)


def test_load_adapter_as_second_adapter_is_strict_too(tmp_path):
    folder = _saved(tmp_path, MonaConfig(modules_to_save=["classifier"]))
    _edit_config(folder, kernel_sizes=[3, 5])
    model = get_peft_model(build_tiny_model("swin"), MonaConfig(modules_to_save=["classifier"]))
    with pytest.raises(AdapterMismatchError, match="adapter 'other'.*dw7_weight"):
        model.load_adapter(folder, adapter_name="other")


def test_load_trainable_checkpoints_are_strict(tmp_path):
    model = get_peft_model(build_tiny_model("swin"), MonaConfig(modules_to_save=["classifier"]))
    save_trainable(model, tmp_path / "ckpt")
    weights = load_file(tmp_path / "ckpt" / WEIGHTS)
    save_file(
        {k: v for k, v in weights.items() if "layers.0.blocks.0.mona_mlp_up" not in k}, tmp_path / "ckpt" / WEIGHTS
    )
    fresh = get_peft_model(build_tiny_model("swin"), MonaConfig(modules_to_save=["classifier"]))
    with pytest.raises(AdapterMismatchError, match=r"missing.*layers\.0\.blocks\.0\.mona_mlp_up"):
        load_trainable(fresh, tmp_path / "ckpt")
    data = (tmp_path / "ckpt" / WEIGHTS).read_bytes()
    (tmp_path / "ckpt" / WEIGHTS).write_bytes(data[:-100])
    with pytest.raises(AdapterMismatchError, match=f"{tmp_path / 'ckpt' / WEIGHTS} is not a complete"):
        load_trainable(fresh, tmp_path / "ckpt")


def test_matching_adapters_still_load_exactly(tmp_path):
    x = build_tiny_pixel_values()
    for method, config in CONFIGS.items():
        model = get_peft_model(build_tiny_model("swin"), config()).eval()
        folder = tmp_path / method
        model.save_pretrained(folder)
        reloaded = PeftModel.from_pretrained(build_tiny_model("swin"), folder).eval()
        with torch.no_grad():
            torch.testing.assert_close(reloaded(pixel_values=x).logits, model(pixel_values=x).logits)


def test_lora_keeps_peft_behaviour(tmp_path):
    lora = LoraConfig(target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"])
    folder = _saved(tmp_path, lora)
    weights = load_file(folder / WEIGHTS)
    save_file({k: v for k, v in weights.items() if "layers.0.blocks.0" not in k}, folder / WEIGHTS)
    with pytest.warns(UserWarning, match="missing adapter keys"):
        PeftModel.from_pretrained(build_tiny_model("swin"), folder)


# ------------------------------------------------------------------------------------------ case 6: config checks


@pytest.mark.parametrize(
    "config_class, kwargs, error, message",
    [
        (MonaConfig, dict(dropout="0.1"), TypeError, r"MonaConfig\.dropout must be in \[0, 1\).*'0\.1' \(str\)"),
        (MonaConfig, dict(inner_dim=True), TypeError, r"MonaConfig\.inner_dim must be a positive integer.*True"),
        (MonaConfig, dict(inner_dim=64.0), TypeError, r"MonaConfig\.inner_dim.*64\.0 \(float\)"),
        (MonaConfig, dict(kernel_sizes=3), TypeError, r"MonaConfig\.kernel_sizes must be a list"),
        (MonaConfig, dict(kernel_sizes=(3, True)), ValueError, r"MonaConfig\.kernel_sizes.*\[True\]"),
        (MonaConfig, dict(prefix_tokens=None), TypeError, r"MonaConfig\.prefix_tokens must be 'adapt' or 'skip'"),
        (MonaConfig, dict(target_modules=3), TypeError, r"MonaConfig\.target_modules must be a regex"),
        (MonaConfig, dict(base_model_type=3), TypeError, r"MonaConfig\.base_model_type"),
        (HoulsbyConfig, dict(inner_dim="8"), TypeError, r"HoulsbyConfig\.inner_dim must be a positive integer"),
        (HoulsbyConfig, dict(activation=None), TypeError, r"HoulsbyConfig\.activation must be one of"),
        (AdaptFormerConfig, dict(scale="0.1"), TypeError, r"AdaptFormerConfig\.scale must be a finite number"),
        (AdaptFormerConfig, dict(scale=True), TypeError, r"AdaptFormerConfig\.scale"),
        (AdaptFormerConfig, dict(scale=float("nan")), ValueError, r"AdaptFormerConfig\.scale"),
        (AdaptFormerConfig, dict(dropout="0"), TypeError, r"AdaptFormerConfig\.dropout must be in \[0, 1\)"),
        (VPTConfig, dict(num_prompts="10"), TypeError, r"VPTConfig\.num_prompts must be a positive integer"),
        (VPTConfig, dict(prompt_dropout=2), ValueError, r"VPTConfig\.prompt_dropout must be in \[0, 1\)"),
        (VPTConfig, dict(deep=1), TypeError, r"VPTConfig\.deep must be True or False"),
    ],
)
def test_config_fields_are_checked_naming_field_value_and_expectation(config_class, kwargs, error, message):
    with pytest.raises(error, match=message) as raised:
        config_class(**kwargs)
    assert isinstance(raised.value, ValueError)  # PEFT's config errors are ValueErrors; type errors are both


def test_configs_accept_json_round_trips():
    # adapter_config.json stores tuples as lists and ints where floats were given: both must load back.
    assert MonaConfig(kernel_sizes=[3, 5], dropout=0).kernel_sizes == (3, 5)
    assert AdaptFormerConfig(scale=1).scale == 1.0


# ------------------------------------------------------------------------------------------ case 9: Mona's rates


def test_mona_projections_train_at_a_tenth_of_the_adapter_rate():
    from mona_peft.tuners.methods import build_method, parameter_groups

    model = build_method(build_tiny_model("swin"), "mona", ["classifier"])
    groups = parameter_groups(model, 1e-2, adapter_lr_scale=2.0)
    rate = {id(p): group["lr"] for group in groups for p in group["params"]}
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for name, parameter in named.items():
        if "classifier" in name:
            expected = 1e-2
        elif any(f".mona_{site}_{proj}." in name for site in ("attn", "mlp") for proj in ("down", "up")):
            expected = 2e-3
        else:
            expected = 2e-2
        assert rate[id(parameter)] == pytest.approx(expected), name
    assert sum(len(group["params"]) for group in groups) == len(named)
    # other methods keep one adapter rate
    adapter = build_method(build_tiny_model("swin"), "adapter", ["classifier"])
    assert sorted(group["lr"] for group in parameter_groups(adapter, 1e-2, 2.0)) == pytest.approx([1e-2, 2e-2])
