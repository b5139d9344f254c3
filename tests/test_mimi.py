"""MiMi: importance scores, structured shrinking (Mona and Houlsby), removal, reload, schedule, optimizer, Trainer."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf
from peft import get_peft_model
from safetensors.torch import load_file

import mona_peft
from mona_peft import HoulsbyConfig, MonaConfig
from mona_peft.mimi import (
    MiMi,
    MiMiCallback,
    MiMiSchedule,
    adapter_sizes,
    find_sites,
    importance_scores,
    select_neurons,
    shrink_adapters,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "mona": lambda **kw: MonaConfig(inner_dim=8, modules_to_save=["classifier"], **kw),
    "houlsby": lambda **kw: HoulsbyConfig(inner_dim=8, modules_to_save=["classifier"], **kw),
}


def build(tiny_swin, method: str, seed: int = 0, **config):
    model = get_peft_model(tiny_swin(), CONFIGS[method](**config))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # trained-looking adapters: an identity-like init could hide a lost or broken neuron
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return model.eval()


def logits(model, x):
    with torch.no_grad():
        return model(pixel_values=x).logits


def owned_tensors(site, i):
    """Views of every parameter entry neuron ``i`` owns (what the score reads)."""
    if site.kind == "houlsby":
        return [site.down.weight[i], site.down.bias[i : i + 1], site.up.weight[:, i]]
    down, conv, up = site._piece("down"), site._piece("filter"), site._piece("up")
    views = [down.weight[i], down.bias[i : i + 1], up.weight[:, i], conv.pw_weight[i], conv.pw_weight[:, i]]
    views += [conv.pw_bias[i : i + 1]]
    for k in conv.kernel_sizes:
        views += [getattr(conv, f"dw{k}_weight")[i], getattr(conv, f"dw{k}_bias")[i : i + 1]]
    return views


def site_numel(site) -> int:
    if site.kind == "houlsby":
        return sum(p.numel() for p in (*site.down.parameters(), *site.up.parameters()))
    return sum(p.numel() for piece in ("norm", "down", "filter", "up") for p in site._piece(piece).parameters())


@pytest.mark.parametrize("method", ["mona", "houlsby"])
def test_score_is_the_mean_absolute_owned_parameter(tiny_swin, method):
    model = build(tiny_swin, method)
    site = find_sites(model, "default")[3]
    views = owned_tensors(site, 2)
    if method == "mona":  # the 1x1 conv's diagonal entry belongs to both its row and its column: counted once
        pw = site._piece("filter").pw_weight
        l1 = sum(v.abs().sum() for v in views) - pw[2, 2].abs().sum()
        count = sum(v.numel() for v in views) - 1
    else:
        l1, count = sum(v.abs().sum() for v in views), sum(v.numel() for v in views)
    assert site.owned(site.size) == count
    torch.testing.assert_close(site.scores()[2], (l1 / count).float())
    torch.testing.assert_close(site.scores(normalize=False)[2], l1.float())
    assert site.params(site.size) == site_numel(site)


@pytest.mark.parametrize("method", ["mona", "houlsby"])
def test_removing_a_zeroed_neuron_leaves_the_output_unchanged(tiny_swin, tiny_pixel_values, method):
    model = build(tiny_swin, method)
    x = tiny_pixel_values(batch=2)
    site = find_sites(model, "default")[2]
    with torch.no_grad():
        for view in owned_tensors(site, 5):
            view.zero_()
    before = logits(model, x)
    scores = importance_scores(model)
    assert scores[site.key][5] == 0 and min(float(s.min()) for s in scores.values()) == 0
    total = sum(len(s) for s in scores.values())
    # The global ranking removes exactly that neuron when one must go.
    keep = select_neurons(find_sites(model, "default"), total - 1)
    assert keep[site.key].tolist() == [0, 1, 2, 3, 4, 6, 7]
    shrink_adapters(model, keep)
    assert find_sites(model, "default")[2].size == 7
    torch.testing.assert_close(logits(model, x), before, rtol=0, atol=1e-5)


def test_shapes_after_shrink(tiny_swin, tiny_pixel_values, tmp_path):
    model = build(tiny_swin, "mona")
    site = find_sites(model, "default")[0]
    trainable_before = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.save_pretrained(tmp_path / "big")
    shrink_adapters(model, {site.key: torch.tensor([1, 4, 6])})
    layer = model.base_model.model.swin.encoder.layers[0].blocks[0]
    down, conv, up = (layer.mona_attn_down["default"], layer.mona_attn_filter["default"], layer.mona_attn_up["default"])
    assert down.weight.shape == (3, 16) and down.bias.shape == (3,) and down.out_features == 3
    assert up.weight.shape == (16, 3) and up.in_features == 3
    assert (
        conv.dw3_weight.shape == (3, 1, 3, 3) and conv.dw7_weight.shape == (3, 1, 7, 7) and conv.dw5_bias.shape == (3,)
    )
    assert conv.pw_weight.shape == (3, 3, 1, 1) and conv.pw_bias.shape == (3,) and conv.channels == 3
    assert layer.mona_mlp_down["default"].out_features == 8  # the other site is untouched
    assert model.peft_config["default"].inner_dim_pattern[site.key] == 3
    trainable_after = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shrunk = find_sites(model, "default")[0]
    assert trainable_before - trainable_after == shrunk.params(8) - shrunk.params(3)
    logits(model, tiny_pixel_values())  # runs on the smaller shapes
    model.save_pretrained(tmp_path / "small")
    sizes = [(tmp_path / d / "adapter_model.safetensors").stat().st_size for d in ("big", "small")]
    assert sizes[0] - sizes[1] >= 4 * (shrunk.params(8) - shrunk.params(3))  # float32: the file shrank as much
    houlsby = build(tiny_swin, "houlsby")
    site = find_sites(houlsby, "default")[1]
    shrink_adapters(houlsby, {site.key: torch.tensor([0, 7])})
    assert site.down.weight.shape == (2, 16) and site.up.weight.shape == (16, 2) and site.up.bias.shape == (16,)
    assert site.down.out_features == site.up.in_features == 2


@pytest.mark.parametrize("method", ["mona", "houlsby"])
def test_emptied_adapter_is_removed_and_skipped(tiny_swin, tiny_pixel_values, method):
    model = build(tiny_swin, method)
    x = tiny_pixel_values(batch=2)
    sites = find_sites(model, "default")
    gone = sites[:2] if method == "mona" else sites[:1]  # Mona: both Monas of the first block
    with torch.no_grad():  # a zero up projection makes an adapter a no-op: removing it must give the same output
        for site in gone:
            up = site.up if method == "houlsby" else site._piece("up")
            up.weight.zero_()
            up.bias.zero_()
    before = logits(model, x)
    result = shrink_adapters(model, {site.key: torch.tensor([], dtype=torch.long) for site in gone})
    assert sorted(result.removed_sites) == sorted(site.key for site in gone)
    torch.testing.assert_close(logits(model, x), before, rtol=0, atol=1e-5)
    swin = model.base_model.model.swin.encoder.layers[0].blocks[0]
    if method == "mona":  # no Mona left in the block: the plain SwinLayer is back
        assert type(swin).__name__ == "SwinLayer" and result.unwrapped_layers == ["swin.encoder.layers.0.blocks.0"]
    else:
        assert type(swin.attention.o_proj).__name__ == "Linear"
    gone_prefix = ".layers.0.blocks.0." if method == "mona" else ".layers.0.blocks.0.attention.o_proj."
    assert all(gone_prefix not in n for n in model.state_dict() if f"{method}_" in n)
    sizes = adapter_sizes(model)
    assert [sizes[site.key] for site in gone] == [0] * len(gone) and len(sizes) == 8


def test_one_mona_of_a_block_removed_the_other_still_runs(tiny_swin, tiny_pixel_values):
    model = build(tiny_swin, "mona")
    site = find_sites(model, "default")[3]  # layers.0.blocks.1, mlp
    with torch.no_grad():
        site._piece("up").weight.zero_()
        site._piece("up").bias.zero_()
    x = tiny_pixel_values(batch=2)
    before = logits(model, x)
    shrink_adapters(model, {site.key: []})
    layer = model.base_model.model.swin.encoder.layers[0].blocks[1]
    assert layer.has_mona("default", "attn") and not layer.has_mona("default", "mlp")
    torch.testing.assert_close(logits(model, x), before, rtol=0, atol=1e-5)


RELOAD = """
import sys, torch, mona_peft
from peft import PeftModel
sys.path.insert(0, {tests!r})
from conftest import build_tiny_pixel_values, build_tiny_swin
model = PeftModel.from_pretrained(build_tiny_swin(), {path!r}).eval()
with torch.no_grad():
    torch.save(model(pixel_values=build_tiny_pixel_values(batch=3)).logits, {out!r})
print(sorted(p.numel() for n, p in model.named_parameters() if ".default." in n and "classifier" not in n))
"""


def test_shrunken_adapters_reload_in_a_fresh_process(tiny_swin, tiny_pixel_values, tmp_path):
    procs, expected = [], {}
    for method in ("mona", "houlsby"):
        model = build(tiny_swin, method)
        sites = find_sites(model, "default")
        keep = {s.key: torch.arange(0, s.size, 1 + i % 3) for i, s in enumerate(sites)}
        keep[sites[0].key] = torch.tensor([], dtype=torch.long)  # removed
        keep[sites[1].key] = torch.tensor([], dtype=torch.long)  # (Mona: the whole first block)
        shrink_adapters(model, keep)
        path = tmp_path / method
        model.save_pretrained(path)
        config = json.loads((path / "adapter_config.json").read_text())
        assert sorted(config["inner_dim_pattern"].values()) == sorted(len(k) for k in keep.values())
        saved = load_file(path / "adapter_model.safetensors")
        assert not any(".layers.0.blocks.0." in key for key in saved if f"{method}_" in key)
        expected[method] = (
            logits(model, tiny_pixel_values(batch=3)),
            sorted(p.numel() for n, p in model.named_parameters() if ".default." in n and "classifier" not in n),
        )
        script = RELOAD.format(tests=str(REPO / "tests"), path=str(path), out=str(tmp_path / f"{method}.pt"))
        procs.append((method, subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)))
    for method, proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        assert json.loads(out.strip().splitlines()[-1]) == expected[method][1]  # the same shapes
        torch.testing.assert_close(torch.load(tmp_path / f"{method}.pt"), expected[method][0], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("rho", "compression", "per_cycle", "first", "initial"),
    [(0.5, 4, 2, None, 64), (0.5, 8, 1, 3, 64), (0.25, 4, 3, None, 100), (0.75, 10, 1, None, 96), (0.5, 1, 2, None, 8)],
)
def test_schedule_total_epochs_match_the_formula(rho, compression, per_cycle, first, initial):
    schedule = MiMiSchedule(rho=rho, compression=compression, epochs_per_cycle=per_cycle, first_epochs=first)
    cycles = math.ceil(math.log(compression) / math.log(1 / (1 - rho)) - 1e-9)
    assert schedule.num_cycles(initial) == cycles
    assert schedule.total_epochs(initial) == (first or per_cycle) + cycles * per_cycle
    path = [schedule.size_after_cycle(k, initial) for k in range(1, cycles + 1)]
    assert path == sorted(path, reverse=True) and (not path or path[-1] == math.floor(initial / compression))
    assert len(schedule.shrink_epochs(initial)) == cycles


def test_mimi_runs_its_schedule_in_a_custom_loop(tiny_swin, tiny_pixel_values):
    model = build(tiny_swin, "houlsby")
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    mimi = MiMi(model, MiMiSchedule(rho=0.5, compression=4, epochs_per_cycle=2))
    assert (mimi.initial_size, mimi.num_cycles, mimi.total_epochs) == (64, 2, 6)
    x, y = tiny_pixel_values(batch=4), torch.tensor([0, 1, 2, 0])
    shrinks = []
    for epoch in range(mimi.total_epochs):
        model(pixel_values=x, labels=y).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if mimi.on_epoch_end(epoch, optimizer) is not None:
            shrinks.append(epoch)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == trainable
    assert shrinks == [1, 3] and [h["neurons"] for h in mimi.history] == [64, 32, 16]
    target = MiMi(build(tiny_swin, "houlsby"), MiMiSchedule(target_params=5000, epochs_per_cycle=1))
    target.on_epoch_end(0)
    target.on_epoch_end(1)
    assert target.adapter_params() <= 5000 and target.total_epochs == 1 + target.num_cycles


def test_global_and_local_ranking_differ_as_expected(tiny_swin):
    def weakened():
        model = build(tiny_swin, "houlsby")
        weak = find_sites(model, "default")[5]
        with torch.no_grad():  # every neuron of this adapter is less important than any other neuron
            for layer in (weak.down, weak.up):
                layer.weight.mul_(1e-3)
                layer.bias.mul_(1e-3)
        return model, weak.key

    model, weak = weakened()
    keep = select_neurons(find_sites(model, "default"), 56, ranking="global")
    assert len(keep[weak]) == 0 and all(len(k) == 8 for key, k in keep.items() if key != weak)
    keep = select_neurons(find_sites(model, "default"), 56, ranking="local")
    assert all(len(k) == 7 for k in keep.values())  # the same fraction everywhere, its weakest neuron each
    sizes = {}
    for mode in ("global", "local"):
        model, weak = weakened()
        mimi = MiMi(model, MiMiSchedule(rho=0.5, compression=2, ranking=mode))
        mimi.on_epoch_end(0)
        sizes[mode] = mimi.sizes()
        assert sum(sizes[mode].values()) == 32
    assert set(sizes["local"].values()) == {4}  # every adapter halved
    assert sizes["global"][weak] == 0 and len(set(sizes["global"].values())) > 2  # the weak one gone, others uneven


@pytest.mark.parametrize("mode", ["slice", "reset"])
def test_optimizer_moments_follow_the_kept_neurons(tiny_swin, tiny_pixel_values, mode):
    model = build(tiny_swin, "houlsby").train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x, y = tiny_pixel_values(batch=4), torch.tensor([0, 1, 2, 0])
    for _ in range(2):
        model(pixel_values=x, labels=y).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    sites = find_sites(model, "default")
    old_down, old_up = sites[0].down.weight, sites[0].up.weight
    old_state = {k: v.clone() for k, v in optimizer.state[old_down].items()}
    old_up_avg = optimizer.state[old_up]["exp_avg"].clone()
    removed = list(sites[1].down.parameters()) + list(sites[1].up.parameters())
    keep = torch.tensor([0, 3, 5])
    shrink_adapters(model, {sites[0].key: keep, sites[1].key: []}, optimizer=optimizer, optimizer_state=mode)
    new_down, new_up = sites[0].down.weight, sites[0].up.weight
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert any(p is new_down for p in params) and not any(p is old_down for p in params)
    assert not any(p is r for p in params for r in removed) and not any(r in optimizer.state for r in removed)
    assert old_down not in optimizer.state
    if mode == "slice":
        state = optimizer.state[new_down]
        torch.testing.assert_close(state["exp_avg"], old_state["exp_avg"][keep])
        torch.testing.assert_close(state["exp_avg_sq"], old_state["exp_avg_sq"][keep])
        assert float(state["step"]) == float(old_state["step"]) == 2
        torch.testing.assert_close(optimizer.state[new_up]["exp_avg"], old_up_avg[:, keep])
    else:
        assert new_down not in optimizer.state and new_up not in optimizer.state
    before = new_down.detach().clone()
    model(pixel_values=x, labels=y).loss.backward()
    optimizer.step()
    assert not torch.equal(new_down, before) and float(optimizer.state[new_down]["step"]) == (
        3 if mode == "slice" else 1
    )


class _Images(torch.utils.data.Dataset):
    def __init__(self, n: int = 8):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 32, 32, generator=generator)
        self.y = torch.randint(0, 3, (n,), generator=generator)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def test_trainer_callback_shrinks_and_keeps_training(tiny_swin, tmp_path):
    model = build(tiny_swin, "mona").train()
    mimi = MiMi(model, MiMiSchedule(rho=0.5, compression=2, epochs_per_cycle=1))
    args = tf.TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=mimi.total_epochs, per_device_train_batch_size=4,
        learning_rate=1e-3, report_to=[], save_strategy="no", logging_strategy="no", remove_unused_columns=False,
        use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = tf.Trainer(model=model, args=args, train_dataset=_Images(), callbacks=[MiMiCallback(mimi)])
    trainer.train()
    assert mimi.cycle == 1 and [h["neurons"] for h in mimi.history] == [64, 32]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in trainable} == optimized  # the second epoch trained the new, smaller parameters
    assert any("mimi_neurons" in entry for entry in trainer.state.log_history)
    with pytest.raises(ValueError, match="num_train_epochs"):
        wrong = tf.TrainingArguments(output_dir=str(tmp_path), num_train_epochs=5, report_to=[], use_cpu=True)
        MiMiCallback(mimi).on_train_begin(wrong, None, None)


def test_training_script_mimi_flags(tiny_swin, tmp_path):
    from mona_peft.tasks.image_classification import main

    model_dir = tmp_path / "tiny-swin"
    tiny_swin().save_pretrained(model_dir)
    tf.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        model_dir
    )
    out = tmp_path / "run"
    results = main(
        [
            "--model_name_or_path", str(model_dir), "--method", "adapter", "--task", "digits-fewshot",
            "--output_dir", str(out), "--report_to", "none", "--inner_dim", "8", "--mimi_target", "2x",
            "--mimi_epochs_per_cycle", "1", "--eval_strategy", "end", "--checkpointing_steps", "no",
            "--per_device_train_batch_size", "50", "--num_warmup_steps", "1",
        ]
    )  # fmt: skip
    assert results["mimi"]["total_epochs"] == 2 and results["mimi"]["history"][-1]["neurons"] == 32
    config = json.loads((out / "adapter_config.json").read_text())
    assert sum(config["inner_dim_pattern"].values()) == 32
    assert results["trainable_params"] == results["mimi"]["history"][-1]["adapter_params"] + 32 * 10 + 10
    with pytest.raises(SystemExit, match="mimi_target"):
        main(["--method", "lora", "--mimi_target", "2x", "--output_dir", str(tmp_path / "x")])


def test_config_widths_and_validation():
    config = MonaConfig(inner_dim=16, inner_dim_pattern={r"blocks\.1": 4, r"blocks\.0\.mona_mlp": 0})
    from mona_peft.tuners.mona.config import mona_inner_dim

    assert mona_inner_dim(config, "swin.encoder.layers.0.blocks.1", "attn") == 4
    assert mona_inner_dim(config, "swin.encoder.layers.0.blocks.0", "mlp") == 0
    assert mona_inner_dim(config, "swin.encoder.layers.0.blocks.0", "attn") == 16
    with pytest.raises(ValueError, match="non-negative"):
        MonaConfig(inner_dim_pattern={"x": -1})
    HoulsbyConfig(inner_dim_pattern={"x": 0})  # 0: no adapter there
    with pytest.raises(ValueError, match="exactly one target"):
        MiMiSchedule()
    assert MiMiSchedule.from_target("20k").target_params == 20_000 and MiMiSchedule.from_target("4x").compression == 4
    assert mona_peft.mimi.MiMiCallback is MiMiCallback


def test_balanced_score_ignores_the_scale_of_each_kind_of_parameter(tiny_swin):
    model = get_peft_model(tiny_swin(), CONFIGS["mona"]())  # freshly initialised: nothing learned yet
    sites = find_sites(model, "default")
    plain = importance_scores(model)
    # Mona's convolutions start ~5x larger than its Linear layers, so the plain score favours the narrow stage
    # (more convolution entries per Linear entry) before any training.
    narrow, wide = (float(plain[s.key].mean()) for s in (sites[0], sites[-1]))
    assert sites[0].channels < sites[-1].channels and narrow > 1.1 * wide
    balanced = importance_scores(model, balanced=True)
    assert all(abs(float(v.mean()) - 1) < 0.1 for v in balanced.values())
    with torch.no_grad():  # rescaling one kind of parameter everywhere leaves the balanced ranking unchanged
        for site in sites:
            site._piece("filter").dw3_weight.mul_(10)
            site._piece("filter").dw3_bias.mul_(10)
    again = importance_scores(model, balanced=True)
    for key in balanced:
        torch.testing.assert_close(again[key], balanced[key], rtol=1e-4, atol=1e-6)


def test_the_mimi_experiment_trains_both_arms_through_the_training_core(tmp_path):
    """scripts/mimi_experiment.py at its smallest: MiMi's arm ends at most at the small arm's size, in as many epochs,
    with its path recorded on validation; both arms' runs are the training core's (their output dirs hold its files)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mimi_experiment", REPO / "scripts" / "mimi_experiment.py")
    experiment = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(experiment)
    argv = ["--tasks", "digits-fewshot", "--seeds", "0", "--methods", "adapter", "--initial_dim", "8"]
    argv += ["--small_dim", "4", "--epochs_per_cycle", "1", "--threads", "1", "--work_dir", str(tmp_path / "work")]
    result = experiment.main([*argv, "--output", str(tmp_path / "results.json"), "--figures", str(tmp_path / "fig")])
    mimi, small = (next(r for r in result["rows"] if r["method"] == f"adapter_{arm}") for arm in ("mimi", "small"))
    assert mimi["adapter_params"] <= small["adapter_params"] == small["target_adapter_params"]
    assert mimi["epochs"] == small["epochs"] and [p["cycle"] for p in mimi["path"]] == [0, 1]
    assert mimi["path"][0]["adapter_params"] > mimi["path"][-1]["adapter_params"] == mimi["adapter_params"]
    assert all(0.0 <= p["val_top1"] <= 1.0 for p in mimi["path"])
    assert len(list((tmp_path / "work").glob("*/all_results.json"))) == 2  # written by the training core


def test_convnext_has_one_site_per_block_that_shrinks_is_removed_and_reloads(tmp_path):
    """A CNN block's one Mona (after its residual add) is MiMi's only site there; shrinking and removing it reload."""
    from conftest import build_tiny_model
    from peft import PeftModel

    model = get_peft_model(build_tiny_model("convnext"), CONFIGS["mona"]()).eval()
    sites = find_sites(model, "default")
    assert [site.site for site in sites] == ["mlp", "mlp"]
    shrink_adapters(model, {sites[0].key: torch.tensor([1, 4, 6]), sites[1].key: torch.tensor([], dtype=torch.long)})
    assert [site.size for site in find_sites(model, "default")] == [3]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(pixel_values=x).logits
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(build_tiny_model("convnext"), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).logits, expected)
