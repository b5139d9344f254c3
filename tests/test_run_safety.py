"""The training run's safety (issue 13 cases 1, 2, 3, 6, 8, 10): resumption never picks another run's or a broken
checkpoint, a finished run keeps its results, bad settings and data fail early and clearly without poisoning the
output dir, one process writes each file under DDP, and FSDP2-sharded adapters save and resume."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from conftest import TINY_SWIN_CONFIG, build_tiny_pixel_values, build_tiny_swin, logits_after_fresh_process_reload
from peft import get_peft_model
from PIL import Image
from safetensors.torch import load_file

import mona_peft
from mona_peft.data import ImageDataError
from mona_peft.tasks.image_classification import main
from mona_peft.training import FineTuningRun

REPO = Path(__file__).resolve().parents[1]


class Interrupted(Exception):
    """Stands for a kill of the training process."""


@pytest.fixture(scope="module")
def tiny_swin_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-swin")
    tf.SwinForImageClassification(tf.SwinConfig(**{**TINY_SWIN_CONFIG, "num_labels": 10})).save_pretrained(path)
    processor = tf.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor.save_pretrained(path)
    return str(path)


def _args(model, output_dir, *extra):
    return [
        "--model_name_or_path", model, "--output_dir", str(output_dir), "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "256", "--report_to", "none", "--num_warmup_steps", "1",
        "--eval_strategy", "end", *extra,
    ]  # fmt: skip


def _interrupt_after_checkpoint(monkeypatch, step):
    """The run is 'killed' right after it wrote ``checkpoint-<step>``."""
    save = FineTuningRun.save_checkpoint

    def save_then_die(self):
        save(self)
        if self.completed_steps >= step:
            raise Interrupted(f"killed after checkpoint-{self.completed_steps}")

    monkeypatch.setattr(FineTuningRun, "save_checkpoint", save_then_die)


def _image_folder(root, classes, count=4):
    rng = np.random.default_rng(0)
    for label in classes:
        (root / label).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


# ------------------------------------------------------------------------------------------------- case 1


def test_resume_after_overwrite_continues_the_new_run_not_the_old_one(tiny_swin_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    steps = ["--max_train_steps", "3", "--checkpointing_steps", "1"]
    main(_args(tiny_swin_dir, out, *steps))  # the old run: checkpoint-1, -2, -3
    old_adapter = load_file(out / "adapter_model.safetensors")
    new_run = [*steps, "--learning_rate", "0.05"]
    with monkeypatch.context() as patch:
        _interrupt_after_checkpoint(patch, 1)
        with pytest.raises(Interrupted):
            main(_args(tiny_swin_dir, out, *new_run, "--overwrite_output_dir"))
    # the replaced run's checkpoints are gone: nothing can resume from them
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    run_id = json.loads((out / "run_args.json").read_text())["run_id"]
    assert json.loads((out / "checkpoint-1" / "training_state.json").read_text())["run_id"] == run_id
    capsys.readouterr()
    results = main(_args(tiny_swin_dir, out, *new_run, "--resume_from_checkpoint", "latest"))
    assert f"Resuming from {out / 'checkpoint-1'}" in capsys.readouterr().out
    assert results["completed_steps"] == 3 and results["run_id"] == run_id
    new_adapter = load_file(out / "adapter_model.safetensors")
    assert any(not torch.equal(new_adapter[k], old_adapter[k]) for k in old_adapter)  # not the old run's weights


# ------------------------------------------------------------------------------------------------- case 2


def test_resuming_a_finished_run_keeps_its_results_and_card(tiny_swin_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    run = ["--max_train_steps", "2"]  # checkpoint at the end of the (only) epoch: checkpoint-2
    main(_args(tiny_swin_dir, out, *run))
    before = {
        name: (out / name).read_bytes() for name in ("all_results.json", "README.md", "adapter_model.safetensors")
    }
    pushed = []
    monkeypatch.setattr(
        "mona_peft.sharing.hub.push_to_hub", lambda folder, repo, token=None: pushed.append(folder) or "url"
    )
    capsys.readouterr()
    results = main(_args(tiny_swin_dir, out, *run, "--resume_from_checkpoint", "latest", "--push_to_hub"))
    assert "already finished" in capsys.readouterr().out
    assert {name: (out / name).read_bytes() for name in before} == before  # untouched
    assert results == json.loads(before["all_results.json"]) and pushed == [out]  # the finished card is pushed

    # Killed while writing its outputs, after the last checkpoint: resuming evaluates, never writes NaN.
    (out / "all_results.json").unlink()
    results = main(_args(tiny_swin_dir, out, *run, "--resume_from_checkpoint", "latest"))
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["eval_top1"] == pytest.approx(json.loads(before["all_results.json"])["eval_top1"])
    assert math.isfinite(saved["train_loss"]) and results["completed_steps"] == 2
    assert "No evaluation results" not in (out / "README.md").read_text()


# ------------------------------------------------------------------------------------------------- case 3


def test_a_save_killed_midway_leaves_no_checkpoint_behind(tiny_swin_dir, tmp_path, monkeypatch, capsys):
    from accelerate import Accelerator

    out = tmp_path / "out"
    run = ["--max_train_steps", "3", "--checkpointing_steps", "1"]
    save_state = Accelerator.save_state

    def killed_during_second_save(self, output_dir=None, **kwargs):
        save_state(self, output_dir, **kwargs)  # the files are written, the save is not finished
        if output_dir.endswith("checkpoint-2"):
            raise Interrupted("killed while saving checkpoint-2")

    with monkeypatch.context() as patch:
        patch.setattr(Accelerator, "save_state", killed_during_second_save)
        with pytest.raises(Interrupted):
            main(_args(tiny_swin_dir, out, *run))
    assert not (out / "checkpoint-2").exists()
    capsys.readouterr()
    results = main(_args(tiny_swin_dir, out, *run, "--resume_from_checkpoint", "latest"))
    assert f"Resuming from {out / 'checkpoint-1'}" in capsys.readouterr().out and results["completed_steps"] == 3
    assert not list(out.glob(".incomplete-*"))  # the killed save's leftovers are cleaned


def test_latest_skips_broken_and_foreign_checkpoints_and_says_why(tiny_swin_dir, tmp_path, capsys):
    out = tmp_path / "out"
    run = ["--max_train_steps", "3", "--checkpointing_steps", "1"]
    main(_args(tiny_swin_dir, out, *run))
    (out / "all_results.json").unlink()  # not finished: resuming must choose a checkpoint
    # checkpoint-3 cut short; checkpoint-7 of another run (a copy with its run id changed); checkpoint-9 half
    # written by an older version (no training_state.json)
    optimizer = out / "checkpoint-3" / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    shutil.copytree(out / "checkpoint-2", out / "checkpoint-7")
    state_file = out / "checkpoint-7" / "training_state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "run_id": "0123456789ab-other"}))
    shutil.copytree(out / "checkpoint-1" / "adapter", out / "checkpoint-9" / "adapter")
    capsys.readouterr()
    main(_args(tiny_swin_dir, out, *run, "--resume_from_checkpoint", "latest"))
    printed = capsys.readouterr().out
    assert "skipping" in printed and "checkpoint-9: it is incomplete (no training_state.json" in printed
    assert "checkpoint-7: it belongs to another run (run id 0123456789ab-other" in printed
    assert f"checkpoint-3: {optimizer} is truncated or overwritten (100 bytes" in printed
    assert f"Resuming from {out / 'checkpoint-2'}" in printed

    # named explicitly, a damaged checkpoint is an error naming the file
    assert json.loads((out / "checkpoint-3" / "training_state.json").read_text())["run_id"] != "0123456789ab-other"
    (out / "all_results.json").unlink()
    optimizer.write_bytes(optimizer.read_bytes()[:100])  # the resumed run wrote checkpoint-3 anew
    with pytest.raises(SystemExit, match=f"checkpoint-3: {optimizer} is truncated"):
        main(_args(tiny_swin_dir, out, *run, "--resume_from_checkpoint", str(out / "checkpoint-3")))
    adapter = out / "checkpoint-2" / "adapter" / "adapter_model.safetensors"
    data = bytearray(adapter.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    adapter.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match=f"{adapter} is corrupt"):
        main(_args(tiny_swin_dir, out, *run, "--resume_from_checkpoint", str(out / "checkpoint-2")))


# ------------------------------------------------------------------------------------------------- case 6


def test_single_class_folder_is_refused_by_name(tiny_swin_dir, tmp_path):
    folder = _image_folder(tmp_path / "one", ["cat"])
    with pytest.raises(ImageDataError, match=f"{folder} has a single class folder \\('cat'\\).*at least 2 classes"):
        main(_args(tiny_swin_dir, tmp_path / "out", "--train_dir", str(folder), "--max_train_steps", "1"))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--checkpointing_steps", "0"], "--checkpointing_steps must be 'epoch', 'no' or a positive number"),
        (["--num_train_epochs", "0"], "--num_train_epochs must be at least 1"),
        (["--max_train_steps", "0"], "--max_train_steps must be at least 1"),
        (["--max_train_steps", "-2"], "--max_train_steps must be at least 1"),
    ],
)
def test_settings_that_train_nothing_are_refused(tiny_swin_dir, tmp_path, flags, message):
    with pytest.raises(SystemExit, match=message):
        main(_args(tiny_swin_dir, tmp_path / "out", *flags))
    assert not (tmp_path / "out").exists()


def test_a_data_error_does_not_poison_the_output_dir(tiny_swin_dir, tmp_path, capsys):
    out = tmp_path / "out"
    broken = _image_folder(tmp_path / "broken", ["cat", "dog"])
    (broken / "dog" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageDataError, match="bad.png"):
        main(_args(tiny_swin_dir, out, "--train_dir", str(broken), "--max_train_steps", "1"))
    fixed = _image_folder(tmp_path / "fixed", ["cat", "dog"])
    results = main(_args(tiny_swin_dir, out, "--train_dir", str(fixed), "--max_train_steps", "1"))
    assert results["completed_steps"] == 1 and "saved nothing: starting over" in capsys.readouterr().out
    # a run that saved something stays protected
    with pytest.raises(SystemExit, match="already holds a different run"):
        main(_args(tiny_swin_dir, out, "--train_dir", str(broken), "--max_train_steps", "1"))


# ------------------------------------------------------------------------------------------------- case 8

_RECORD_WRITERS = """
import os, sys
from pathlib import Path
import mona_peft.training.checkpoints as checkpoints
from mona_peft.tasks.image_classification import main

save = checkpoints.save_trainable

def recorded(model, directory):
    with open(os.environ["WRITERS_LOG"], "a") as log:
        log.write(f"{os.environ['RANK']} {Path(directory).parent.name}\\n")
    return save(model, directory)

checkpoints.save_trainable = recorded
main(sys.argv[1:])
"""


def test_ddp_checkpoints_are_written_by_the_main_process_only(tiny_swin_dir, tmp_path):
    out, log = tmp_path / "ddp", tmp_path / "writers.log"
    script = tmp_path / "train_recording_writers.py"
    script.write_text(_RECORD_WRITERS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "1"}
    env["WRITERS_LOG"] = str(log)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command = [*launch, str(script), *_args(tiny_swin_dir, out, "--max_train_steps", "2", "--checkpointing_steps", "1")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    writers = sorted(line.split() for line in log.read_text().splitlines())
    assert [rank for rank, _ in writers] == ["0", "0"]  # one writer per checkpoint: the main process
    assert [folder for _, folder in writers] == [".incomplete-checkpoint-1", ".incomplete-checkpoint-2"]
    run_id = json.loads((out / "run_args.json").read_text())["run_id"]
    for step in (1, 2):
        state = json.loads((out / f"checkpoint-{step}" / "training_state.json").read_text())
        assert state["run_id"] == run_id and {"random_states_0.pkl", "random_states_1.pkl"} <= set(state["files"])
    assert not list(out.glob(".incomplete-*"))


# ------------------------------------------------------------------------------------------------- case 10

_FSDP_WORKER = """
import os, sys
from pathlib import Path
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
sys.path.insert(0, {tests!r})
from conftest import build_tiny_swin, build_tiny_pixel_values
import mona_peft
from peft import get_peft_model
from mona_peft.tuners.methods import load_trainable
from mona_peft.training.checkpoints import is_sharded, save_final_weights, save_trainable_weights

out = Path(sys.argv[1])
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()


class Process:
    is_main_process = rank == 0


def sharded_model(seed=0):
    model = get_peft_model(build_tiny_swin(seed=seed), mona_peft.MonaConfig(modules_to_save=["classifier"]))
    model.eval()  # no dropout: the gradients of one process and two must match
    for layer in model.base_model.model.swin.encoder.layers:
        fully_shard(layer)
    fully_shard(model)
    assert is_sharded(model)
    return model


model = sharded_model()
x, labels = build_tiny_pixel_values(batch=4), torch.tensor([0, 1, 2, 1])
half = slice(2 * rank, 2 * rank + 2)  # the same global batch, split over the processes
model(pixel_values=x[half], labels=labels[half]).loss.backward()
grads = {{n: p.grad.full_tensor() for n, p in model.named_parameters() if p.requires_grad}}
torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()
with torch.no_grad():
    logits = model(pixel_values=x).logits
save_trainable_weights(model, out / "checkpoint" / "adapter", Process)
save_final_weights(model, out / "final", Process)
dist.barrier()
resumed = sharded_model(seed=0)
load_trainable(resumed, out / "checkpoint" / "adapter")  # what resuming a checkpoint does
with torch.no_grad():
    resumed_logits = resumed(pixel_values=x).logits
if rank == 0:
    torch.save({{"grads": grads, "logits": logits, "resumed_logits": resumed_logits}}, out / "sharded.pt")
dist.destroy_process_group()
"""


def test_fsdp2_sharded_mona_trains_saves_and_resumes(tmp_path):
    script = tmp_path / "fsdp_worker.py"
    script.write_text(_FSDP_WORKER.format(tests=str(REPO / "tests")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run([*command, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = torch.load(tmp_path / "sharded.pt")

    # one process, the whole batch
    model = get_peft_model(build_tiny_swin(), mona_peft.MonaConfig(modules_to_save=["classifier"])).eval()
    x, labels = build_tiny_pixel_values(batch=4), torch.tensor([0, 1, 2, 1])
    model(pixel_values=x, labels=labels).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads.keys() == sharded["grads"].keys()
    for name, grad in grads.items():
        torch.testing.assert_close(sharded["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()
    with torch.no_grad():
        torch.testing.assert_close(sharded["logits"], model(pixel_values=x).logits, rtol=1e-4, atol=1e-5)

    # the saved adapters reload, in a fresh process, to the sharded model's outputs; resuming restores them too
    build_tiny_swin().save_pretrained(tmp_path / "base")
    saved = {"checkpoint": (tmp_path / "base", tmp_path / "checkpoint" / "adapter")}
    saved["final"] = (tmp_path / "base", tmp_path / "final")
    reloaded = logits_after_fresh_process_reload(tmp_path, saved, x, "MonaConfig")
    for name in saved:
        torch.testing.assert_close(reloaded[name], sharded["logits"], rtol=0, atol=1e-6, msg=name)
    torch.testing.assert_close(sharded["resumed_logits"], sharded["logits"], rtol=0, atol=1e-6)
