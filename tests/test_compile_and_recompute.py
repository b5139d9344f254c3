"""Compiled Mona (``--torch_compile``): it trains, saves plain keys, reloads, and compiles without graph breaks."""

import dataclasses
import json

import pytest
import torch
import transformers as tf
from conftest import build_tiny_pixel_values, build_tiny_swin, build_tiny_vit, logits_after_fresh_process_reload
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

import mona_peft
from mona_peft.tasks.image_classification import main
from mona_peft.training.config import RunConfig

# aot_eager traces exactly what inductor traces (Dynamo + AOTAutograd) without generating C++: seconds, not minutes,
# on these 2 CPU cores. Inductor itself works here (g++ is installed); the speed benchmark uses it.
BACKEND = "aot_eager"


@pytest.fixture(scope="module")
def tiny_swin_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-swin-compile")
    build_tiny_swin(num_labels=10).save_pretrained(path)  # the default task (digits) has 10 classes
    processor = tf.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor.save_pretrained(path)
    return path


def _train(model_dir, output_dir, *extra):
    args = ["--model_name_or_path", str(model_dir), "--output_dir", str(output_dir), "--report_to", "none"]
    args += ["--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "128", "--num_warmup_steps", "1"]
    return main(args + ["--max_train_steps", "3", "--checkpointing_steps", "no", *extra])


def test_compile_options_follow_transformers_flags():
    assert RunConfig().compile_options() is None
    assert RunConfig(torch_compile=True).compile_options() == {}
    assert RunConfig(torch_compile_backend="aot_eager").compile_options() == {"backend": "aot_eager"}
    assert RunConfig(torch_compile=True).identity() == RunConfig().identity()  # resumable with or without it


def test_compiled_run_trains_like_eager_saves_plain_keys_and_reloads(tiny_swin_dir, tmp_path):
    eager_results = _train(tiny_swin_dir, tmp_path / "eager")
    compiled_flags = ("--torch_compile", "--torch_compile_backend", BACKEND)
    compiled_results = _train(tiny_swin_dir, tmp_path / "compiled", *compiled_flags)
    assert compiled_results["completed_steps"] == 3
    assert compiled_results["train_loss"] == pytest.approx(eager_results["train_loss"], rel=1e-4)
    eager, compiled = (load_file(tmp_path / run / "adapter_model.safetensors") for run in ("eager", "compiled"))
    assert compiled.keys() == eager.keys()
    assert not any("_orig_mod" in key for key in compiled)
    for key, value in compiled.items():
        torch.testing.assert_close(value, eager[key], rtol=1e-4, atol=1e-5)

    x = build_tiny_pixel_values(batch=4)
    base = tf.AutoModelForImageClassification.from_pretrained(tiny_swin_dir)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "compiled").eval()
    with torch.no_grad():
        eager_logits = reloaded(pixel_values=x).logits
        compiled_logits = torch.compile(reloaded, backend=BACKEND)(pixel_values=x).logits
    torch.testing.assert_close(compiled_logits, eager_logits, rtol=1e-5, atol=1e-5)
    fresh = logits_after_fresh_process_reload(
        tmp_path, {"compiled": (tiny_swin_dir, tmp_path / "compiled")}, x, "MonaConfig"
    )
    torch.testing.assert_close(fresh["compiled"], eager_logits, rtol=1e-5, atol=1e-5)


def test_saving_a_compiled_model_writes_plain_keys(tmp_path):
    model = get_peft_model(build_tiny_swin(), mona_peft.MonaConfig(modules_to_save=["classifier"]))
    x = build_tiny_pixel_values()
    wrapped = torch.compile(model, backend=BACKEND)  # an OptimizedModule holding the PeftModel as `_orig_mod`
    wrapped(pixel_values=x)
    wrapped.save_pretrained(tmp_path / "wrapped")
    model.compile(backend=BACKEND)  # in place, as --torch_compile does
    model(pixel_values=x)
    model.save_pretrained(tmp_path / "in_place")
    for name in ("wrapped", "in_place"):
        keys = load_file(tmp_path / name / "adapter_model.safetensors").keys()
        assert keys and not any("_orig_mod" in key for key in keys)


@pytest.mark.parametrize("build", [build_tiny_swin, build_tiny_vit], ids=["swin", "vit"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_compiled_mona_has_no_graph_breaks(build, mode):
    model = get_peft_model(build(), mona_peft.MonaConfig(modules_to_save=["classifier"]))
    getattr(model, mode)()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(pixel_values=build_tiny_pixel_values(), labels=torch.tensor([0, 1]))
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_speed_benchmark_adds_compiled_rows_beside_the_eager_ones(tmp_path, monkeypatch):
    from harness import speed

    def tiny(image_size: int = 32, seed: int = 0):  # the benchmark's Swin-T, shrunk: the rows, not the numbers
        return build_tiny_swin(seed=seed, depths=[1], num_heads=[2]).train()

    monkeypatch.setitem(speed.SPEED_MODELS, "swin-t", dataclasses.replace(speed.SPEED_MODELS["swin-t"], build=tiny))
    config = speed.SpeedConfig(
        methods=["mona"], image_size=32, repeats=2, warmup=0, threads=1, torch_compile=True, compile_backend=BACKEND
    )
    threads = torch.get_num_threads()
    try:  # one thread: two threads on 2 shared cores spin and make even this tiny run take a minute
        report = speed.run_speed(config, tmp_path / "speed.json", "test", log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    rows = {(row["method"], row["mode"]): row for row in report["rows"]}
    assert list(rows) == [(m, mode) for mode in ("eager", "compiled") for m in ("full", "lora", "mona")]
    for (_, mode), row in rows.items():
        assert row["train_step_ratio_vs_full"] > 0 and row["infer_latency_ratio_vs_base"] > 0
        assert ("compile_s" in row) == (mode == "compiled")
    assert rows[("full", "compiled")]["train_step_ratio_vs_full"] == 1.0  # ratios within the mode
    assert rows[("lora", "compiled")]["train_step_ratio_vs_lora"] == 1.0
    compile_s = rows[("mona", "compiled")]["compile_s"]
    assert (
        compile_s["total"] == pytest.approx(compile_s["inference"] + compile_s["training"]) and compile_s["total"] > 0
    )
    assert set(report["mona_meets_targets"]) == set(report["mona_meets_targets_compiled"])
    assert report["bare_infer_median_ms_compiled"] > 0


def test_speed_benchmark_measures_variants_and_several_models_in_one_command(tmp_path, monkeypatch):
    """What the GPU run does (two networks, a Mona variant beside Mona, bf16 autocast), on CPU with tiny networks."""
    from harness import cli, speed

    def tiny(image_size: int = 32, seed: int = 0):
        return build_tiny_swin(seed=seed, depths=[1], num_heads=[2]).train()

    for name in ("swin-t", "upernet-swin-t"):
        monkeypatch.setitem(speed.SPEED_MODELS, name, dataclasses.replace(speed.SPEED_MODELS["swin-t"], build=tiny))
    built = []
    build_method = mona_peft.tuners.methods.build_method
    monkeypatch.setattr(
        mona_peft.tuners.methods, "build_method", lambda *a, **o: built.append(o) or build_method(*a, **o)
    )
    argv = ["--speed", "--speed_model", "swin-t", "upernet-swin-t", "--image_size", "32", "--repeats", "1"]
    argv += ["--warmup", "0", "--speed_threads", "1", "--bf16", "--floor", "--output_dir", str(tmp_path)]
    threads = torch.get_num_threads()
    try:
        reports = cli.main([*argv, "--methods", "mona", "mona:gradient_checkpointing=true"])
    finally:
        torch.set_num_threads(threads)
    assert set(reports) == {"swin-t", "upernet-swin-t"}
    for model, report in reports.items():
        assert json.loads(json.dumps(report)) == json.loads((tmp_path / f"speed_{model}.json").read_text())
        assert report["config"]["bf16"] is True and report["config"]["model"] == model
        methods = [row["method"] for row in report["rows"]]
        assert methods == ["full", "lora", "mona", "mona:gradient_checkpointing=true"]
        floors = report["mona_floor"]["floors"]
        assert report["mona_floor"]["monas"] == 2 and floors["peak"]["infer_latency_ratio_vs_base"] > 1
    assert {"gradient_checkpointing": True} in built  # the variant's option reached the method's builder
    assert speed.parse_variant("lora") == ("lora", {})
    with pytest.raises(ValueError, match="option 'inner_dim' of 'mona:inner_dim'"):
        speed.parse_variant("mona:inner_dim")
    with pytest.raises(ValueError, match="does not accept|not accept|unknown"):
        speed.build_models(speed.SpeedConfig(methods=["lora:gradient_checkpointing=true"], image_size=32))
    with pytest.raises(ValueError, match="add mona"):
        speed.run_speed(speed.SpeedConfig(methods=["lora"], image_size=32, floor=True), None, "test")
    with pytest.raises(SystemExit):
        cli.main([*argv, "--speed_output", str(tmp_path / "one.json")])


def test_speed_autocast_is_bf16_on_cuda_by_default_only():
    from harness.speed import SpeedConfig

    assert SpeedConfig(device="cuda").bf16 is True and SpeedConfig().bf16 is False
    with SpeedConfig(bf16=True).autocast():
        assert torch.nn.functional.linear(torch.ones(1, 2), torch.ones(3, 2)).dtype == torch.bfloat16
    with SpeedConfig().autocast():
        assert torch.nn.functional.linear(torch.ones(1, 2), torch.ones(3, 2)).dtype == torch.float32


# -- MonaConfig(gradient_checkpointing=True): Mona's inside recomputed in backward -------------------------------------


def _mona_swin(checkpointing: bool, **config):
    torch.manual_seed(0)
    return get_peft_model(
        build_tiny_swin(),
        mona_peft.MonaConfig(gradient_checkpointing=checkpointing, modules_to_save=["classifier"], **config),
    )


@pytest.mark.parametrize("build", [build_tiny_swin, build_tiny_vit], ids=["swin", "vit"])
def test_checkpointed_mona_gives_the_same_gradients_and_keeps_less(build):
    x = build_tiny_pixel_values(batch=3).double()
    results = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = get_peft_model(build(), mona_peft.MonaConfig(gradient_checkpointing=checkpointing)).double().train()
        pixels = x.clone().requires_grad_(True)
        saved_bytes = []

        def pack(tensor, saved=saved_bytes):
            saved.append(tensor.numel() * tensor.element_size())
            return tensor

        torch.manual_seed(1)  # the same dropout masks in both runs (checkpoint replays them in its recomputation)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            logits = model(pixel_values=pixels).logits
        (logits * torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).view_as(logits)).sum().backward()
        grads = {name: p.grad for name, p in model.named_parameters() if ".mona_" in name}
        assert grads and all(grad is not None for grad in grads.values())
        results[checkpointing] = (logits.detach(), pixels.grad, grads, sum(saved_bytes))
    (logits, dx, grads, kept), (logits_c, dx_c, grads_c, kept_c) = results[False], results[True]
    torch.testing.assert_close(logits_c, logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx_c, dx, rtol=1e-10, atol=1e-12)
    assert grads_c.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grads_c[name], grad, rtol=1e-10, atol=1e-12, msg=name)
    assert kept_c < kept  # what checkpointing is for: fewer bytes held for backward


def test_gradient_checkpointing_round_trips_and_its_adapter_reloads(tmp_path):
    config = mona_peft.MonaConfig(gradient_checkpointing=True, modules_to_save=["classifier"])
    config.save_pretrained(tmp_path / "config")
    assert mona_peft.MonaConfig.from_pretrained(tmp_path / "config").gradient_checkpointing is True
    with pytest.raises(TypeError):
        mona_peft.MonaConfig(gradient_checkpointing="yes")

    model = _mona_swin(True)
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(build_tiny_swin(), tmp_path / "adapter", is_trainable=True).eval()
    assert reloaded.peft_config["default"].gradient_checkpointing is True
    layers = [m for m in reloaded.modules() if hasattr(m, "mona_gradient_checkpointing")]
    assert layers and all(layer.mona_gradient_checkpointing == {"default": True} for layer in layers)
    x = build_tiny_pixel_values()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).logits, model.eval()(pixel_values=x).logits)
    reloaded.train()
    reloaded(pixel_values=x).logits.sum().backward()  # trains after reloading, recomputing Mona
    assert all(p.grad is not None for n, p in reloaded.named_parameters() if ".mona_" in n)


def test_checkpointed_mona_compiles_without_graph_breaks():
    model = _mona_swin(True).train()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(pixel_values=build_tiny_pixel_values(), labels=torch.tensor([0, 1]))
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
