"""Model cards and Hub upload, against the Hub-compatible test server in tests/hub_server.py (no internet)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, metadata_load
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from peft import get_peft_model
from transformers import SwinConfig, SwinForImageClassification

import mona_peft
from mona_peft.sharing import model_card
from mona_peft.sharing.hub import push_to_hub
from mona_peft.sharing.model_card import render_model_card, write_model_card
from mona_peft.tasks.image_classification import ImageClassificationTask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import HubServer, isolate_hf_home, patch_endpoint  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_test"
USER = "test-user"

CARD_ARGS = dict(
    base_model="microsoft/swin-tiny-patch4-window7-224",
    method="mona",
    dataset="timm/oxford-iiit-pet",
    metrics={"top1": 0.9312, "top5": 0.9951, "loss": 0.2875},
    hyperparameters={"learning_rate": 1e-3, "inner_dim": 64, "per_device_train_batch_size": 32, "seed": 42},
    trainable_params=1_436_453,
    total_params=29_256_471,
    adapter_bytes=5_790_000,
    repo_id=f"{USER}/mona-swin-tiny-pets",
    num_labels=37,
    extra_tags=["vision"],
    task=ImageClassificationTask.card,
)

LOAD_SCRIPT = """
import sys
import torch
import mona_peft  # registers Mona with PEFT
from peft import PeftModel
from transformers import AutoModelForImageClassification

base_dir, repo_id, out = sys.argv[1:4]
model = PeftModel.from_pretrained(AutoModelForImageClassification.from_pretrained(base_dir), repo_id).eval()
x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1234))
with torch.no_grad():
    torch.save(model(pixel_values=x).logits, out)
"""


def tiny_swin() -> SwinForImageClassification:
    torch.manual_seed(0)
    config = SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=3
    )
    return SwinForImageClassification(config).eval()


def fixed_input() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1234))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The test Hub, with this process's huggingface_hub pointed at it (online, cache in tmp)."""
    with HubServer(tokens={TOKEN: USER}) as server:
        patch_endpoint(monkeypatch, server.url)
        isolate_hf_home(monkeypatch, tmp_path / "hf_home")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield server


def child_env(hub: HubServer, tmp_path: Path, token: str | None) -> dict[str, str]:
    """Environment of a fresh process that talks to the test Hub (set before huggingface_hub is imported)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp_path / "child_hf_home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    )
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def logits_in_fresh_process(hub: HubServer, tmp_path: Path, script: str, *args: str) -> torch.Tensor:
    """Run ``script`` (it saves logits to its last argument) in a new Python that talks to the test Hub."""
    out = tmp_path / "child_logits.pt"
    result = subprocess.run(
        [sys.executable, "-c", script, *args, str(out)],
        env=child_env(hub, tmp_path, token=TOKEN),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out)


# ------------------------------------------------------------------------------------------------ model card


def test_model_card_metadata_parses_with_huggingface_hub(tmp_path):
    text = render_model_card(**CARD_ARGS)
    data = ModelCard(text).data

    assert data.library_name == "peft"
    assert data.base_model == CARD_ARGS["base_model"]
    assert data.pipeline_tag == "image-classification"
    assert data.datasets == [CARD_ARGS["dataset"]]
    for tag in ("mona", "peft", "image-classification", CARD_ARGS["dataset"], "mona_peft", "vision"):
        assert tag in data.tags
    results = {r.metric_name: r for r in data.eval_results}
    assert results["Top-1 Accuracy"].metric_value == pytest.approx(0.9312)
    assert results["Top-1 Accuracy"].metric_type == "accuracy"
    assert results["Top-5 Accuracy"].metric_value == pytest.approx(0.9951)
    assert {r.task_type for r in data.eval_results} == {"image-classification"}
    assert {r.dataset_type for r in data.eval_results} == {CARD_ARGS["dataset"]}
    assert data.model_name == "mona-swin-tiny-pets"

    path = tmp_path / "README.md"
    path.write_text(text)
    meta = metadata_load(path)
    assert meta["library_name"] == "peft"
    assert meta["model-index"][0]["results"][0]["task"]["type"] == "image-classification"

    body = ModelCard(text).text
    assert body.index("import mona_peft") < body.index(
        'PeftModel.from_pretrained(base, "test-user/mona-swin-tiny-pets")'
    )
    assert "num_labels=37, ignore_mismatched_sizes=True" in body
    assert "| learning_rate | 0.001 |" in body and "| per_device_train_batch_size | 32 |" in body
    assert "1,436,453" in body and "29,256,471" in body and "4.91 %" in body  # trainable share
    assert "5.5 MB (5,790,000 bytes)" in body
    for row in ("| top-1 accuracy | 0.9312 |", "| top-5 accuracy | 0.9951 |", "| loss | 0.2875 |"):
        assert row in body
    assert "- PEFT " in body
    assert model_card.is_mona_peft_card(text)


def test_model_card_local_base_model_and_top1_only(tmp_path):
    args = {**CARD_ARGS, "base_model": str(tmp_path), "metrics": {"eval_accuracy": 0.5}, "repo_id": None}
    text = render_model_card(**args)
    data = ModelCard(text).data
    assert data.base_model is None  # the Hub rejects local paths as base_model
    # no path of the training machine: the folder's name in the text, a placeholder the reader replaces in the snippet
    assert str(tmp_path) not in text and f"a local checkpoint (`{tmp_path.name}`)" in text
    assert 'from_pretrained(\n    "path/to/base-model"' in text and 'Replace `"path/to/base-model"`' in text
    assert [(r.metric_type, r.metric_value) for r in data.eval_results] == [("accuracy", 0.5)]
    assert "path/to/this/adapter" in text

    no_results = ModelCard(render_model_card(**{**args, "metrics": {}})).data
    assert no_results.eval_results is None and no_results.library_name == "peft"

    with pytest.raises(ValueError, match="trainable_params"):
        render_model_card(**{**CARD_ARGS, "trainable_params": 10, "total_params": 5})


# ------------------------------------------------------------------------------------------------- push + load


def test_push_to_hub_and_load_in_fresh_process(hub, tmp_path):
    base = tiny_swin()
    base.save_pretrained(tmp_path / "base")
    x = fixed_input()
    with torch.no_grad():
        base_logits = base(pixel_values=x).logits
    model = get_peft_model(base, mona_peft.MonaConfig(modules_to_save=["classifier"])).eval()
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    assert not torch.allclose(logits, base_logits)  # the adapter changes the output, so the check below means something

    folder = tmp_path / "adapter"
    model.save_pretrained(folder)
    assert not model_card.is_mona_peft_card((folder / "README.md").read_text())  # PEFT's placeholder card
    (folder / "all_results.json").write_text(json.dumps({"eval_top1": 0.75}))
    (folder / "run_args.json").write_text("{}")
    (folder / "checkpoints" / "step_10").mkdir(parents=True)
    (folder / "checkpoints" / "step_10" / "adapter_config.json").write_text("{}")
    (folder / "runs").mkdir()
    (folder / "runs" / "events.out.tfevents.1").write_bytes(b"log")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    repo_id = f"{USER}/mona-tiny-swin"
    write_model_card(
        folder,
        **{
            **CARD_ARGS,
            "base_model": f"{USER}/tiny-swin",
            "dataset": "sklearn-digits",
            "metrics": {"top1": 0.75},
            "trainable_params": trainable,
            "total_params": total,
            "adapter_bytes": (folder / "adapter_model.safetensors").stat().st_size,
            "repo_id": repo_id,
            "num_labels": 3,
        },
    )

    url = push_to_hub(folder, repo_id, token=TOKEN, private=True)

    head = hub.state.repos[("model", repo_id)].refs["main"]
    assert url == f"{hub.url}/{repo_id}/commit/{head}"
    files = hub.files(repo_id)
    uploaded = {"README.md", "adapter_config.json", "adapter_model.safetensors", "all_results.json"}
    assert set(files) == uploaded | {".gitattributes"}  # not run_args.json, checkpoints/, runs/
    assert files["adapter_model.safetensors"] == (folder / "adapter_model.safetensors").read_bytes()
    assert hub.state.unhandled == []
    assert not any("lfs" in path or "xet" in path for _, path in hub.state.requests)

    # The card on the Hub is ours, parsed from a real download.
    api = HfApi(endpoint=hub.url, token=TOKEN)
    readme = api.hf_hub_download(repo_id, "README.md", cache_dir=tmp_path / "cache")
    text = Path(readme).read_text()
    assert model_card.is_mona_peft_card(text) and "Model Card for Model ID" not in text
    meta = metadata_load(readme)
    assert meta["library_name"] == "peft" and meta["base_model"] == f"{USER}/tiny-swin"
    assert {"mona", "peft", "mona_peft", "sklearn-digits"} <= set(meta["tags"])
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.75
    info = api.model_info(repo_id)
    assert info.sha == head and info.private and "mona_peft" in info.card_data.tags
    assert not HfApi(endpoint=hub.url, token=False).file_exists(repo_id, "adapter_config.json")  # private

    # A fresh process that only knows HF_ENDPOINT and the token loads the adapter from the Hub.
    child_logits = logits_in_fresh_process(hub, tmp_path, LOAD_SCRIPT, str(tmp_path / "base"), repo_id)
    torch.testing.assert_close(child_logits, logits, atol=1e-6, rtol=0)
    downloads = [path for method, path in hub.state.requests if method == "GET" and "/resolve/" in path]
    assert f"/{repo_id}/resolve/main/adapter_model.safetensors" in downloads
    assert hub.state.unhandled == []


WHOLE_MODEL_LOAD_SCRIPT = """
import sys
import torch
from transformers import AutoModelForImageClassification

repo_id, out = sys.argv[1:3]
model = AutoModelForImageClassification.from_pretrained(repo_id).eval()
x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1234))
with torch.no_grad():
    torch.save(model(pixel_values=x).logits, out)
"""


def test_whole_model_baseline_is_pushed_with_its_card_and_loads_without_peft(hub, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification, ViTImageProcessor

    from mona_peft.tasks.image_classification import main

    base = tmp_path / "base"
    tiny_swin().save_pretrained(base)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(base)
    repo_id, out = f"{USER}/bitfit-digits", tmp_path / "out"
    main(
        [
            "--model_name_or_path", str(base), "--output_dir", str(out), "--method", "bitfit", "--report_to", "none",
            "--per_device_train_batch_size", "16", "--max_train_steps", "1", "--learning_rate", "0.05",
            "--push_to_hub", "--hub_model_id", repo_id, "--hub_token", TOKEN,
        ]
    )  # fmt: skip

    files = hub.files(repo_id)
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "all_results.json"} <= set(
        files
    )
    assert not any(name.startswith(("checkpoint", "adapter_")) or name == "run_args.json" for name in files)
    meta = metadata_load(HfApi(endpoint=hub.url, token=TOKEN).hf_hub_download(repo_id, "README.md"))
    assert meta["library_name"] == "transformers" and "peft" not in meta["tags"]
    assert {"bitfit", "transformers", "mona_peft", "image-classification"} <= set(meta["tags"])
    assert meta["model-index"][0]["results"][0]["metrics"][0]["type"] == "accuracy"
    card = files["README.md"].decode()
    assert "BitFit" in card and "PeftModel" not in card and "import mona_peft" not in card

    # A fresh process with transformers alone gets the trained model's logits (and its image processor).
    trained = AutoModelForImageClassification.from_pretrained(out).eval()
    with torch.no_grad():
        expected = trained(pixel_values=fixed_input()).logits
    assert AutoImageProcessor.from_pretrained(out).size == {"height": 32, "width": 32}
    child_logits = logits_in_fresh_process(hub, tmp_path, WHOLE_MODEL_LOAD_SCRIPT, repo_id)
    torch.testing.assert_close(child_logits, expected, atol=1e-6, rtol=0)
    assert hub.state.unhandled == []


def test_push_again_to_a_branch(hub, tmp_path):
    folder = tmp_path / "adapter"
    get_peft_model(tiny_swin(), mona_peft.MonaConfig(modules_to_save=["classifier"])).save_pretrained(folder)
    write_model_card(folder, **{**CARD_ARGS, "repo_id": f"{USER}/branchy"})
    first = push_to_hub(folder, "branchy", token=TOKEN)  # namespace from the token, as on the Hub
    repo = hub.state.repos[("model", f"{USER}/branchy")]
    assert first.endswith(repo.refs["main"])

    (folder / "all_results.json").write_text(json.dumps({"eval_top1": 0.5}))
    second = push_to_hub(folder, f"{USER}/branchy", token=TOKEN, revision="experiment", commit_message="v2")
    assert second.endswith(repo.refs["experiment"]) and repo.refs["experiment"] != repo.refs["main"]
    assert "all_results.json" in hub.files(f"{USER}/branchy", "experiment")
    assert "all_results.json" not in hub.files(f"{USER}/branchy", "main")
    assert repo.commits[repo.refs["experiment"]].title == "v2"


def test_push_without_adapter_files_names_them(hub, tmp_path):
    folder = tmp_path / "not_an_adapter"
    folder.mkdir()
    (folder / "README.md").write_text("# card\n")
    with pytest.raises(
        FileNotFoundError,
        match=r"adapter_config.json and adapter_model.safetensors\) nor a saved "
        r"model \(missing config.json and model.safetensors",
    ):
        push_to_hub(folder, f"{USER}/x", token=TOKEN)
    (folder / "adapter_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"adapter \(missing adapter_model.safetensors\)"):
        push_to_hub(folder, f"{USER}/x", token=TOKEN)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        push_to_hub(tmp_path / "missing", f"{USER}/x", token=TOKEN)
    assert hub.state.requests == []  # nothing was sent


# ---------------------------------------------------------------------------------------------- server protocol


def test_hub_server_errors_match_the_hub(hub, tmp_path):
    api = HfApi(endpoint=hub.url, token=TOKEN)
    repo = f"{USER}/errors"
    api.create_repo(repo)
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as conflict:
        api.create_repo(repo)
    assert conflict.value.response.status_code == 409
    api.upload_file(path_or_fileobj=b"hello world", path_in_repo="dir/a.txt", repo_id=repo)

    cache = tmp_path / "cache"
    with pytest.raises(RepositoryNotFoundError):
        api.hf_hub_download(f"{USER}/nope", "a.txt", cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        api.hf_hub_download(repo, "dir/a.txt", revision="nope", cache_dir=cache)
    with pytest.raises(EntryNotFoundError):
        api.hf_hub_download(repo, "missing.txt", cache_dir=cache)
    assert api.file_exists(repo, "dir/a.txt") and not api.file_exists(repo, "b.txt")
    assert Path(api.hf_hub_download(repo, "dir/a.txt", cache_dir=cache)).read_bytes() == b"hello world"
    assert sorted(api.list_repo_files(repo)) == [".gitattributes", "dir/a.txt"]

    with pytest.raises(ValueError, match="base_model"):  # the Hub's README metadata validation
        api.upload_file(path_or_fileobj=b"---\nbase_model: /tmp/x\n---\n", path_in_repo="README.md", repo_id=repo)
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as unauthorized:
        HfApi(endpoint=hub.url, token="hf_wrong").create_repo(f"{USER}/other")
    assert unauthorized.value.response.status_code == 401
    assert hub.state.unhandled == []


@pytest.mark.parametrize(
    ("segmenter", "model_type", "overrides"),
    [("upernet", "swin", dict(depths=[1, 1, 1], num_heads=[2, 2, 4])), ("eomt", "vit", dict(num_hidden_layers=3))],
)
def test_segmentation_adapter_is_pushed_and_its_cards_snippet_reloads_it_in_a_fresh_process(
    segmenter, model_type, overrides, hub, tmp_path
):
    """UperNet around a Swin and EoMT around a plain ViT: pushed, and the card's snippet (its own forward and
    transformers' pipeline, which for EoMT slides the processor's windows) reloads the adapter in a fresh process."""
    import numpy as np
    from conftest import build_tiny_model, card_snippet
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoImageProcessor, ViTImageProcessor

    from mona_peft.tasks.semantic_segmentation.model import load_segmentation_base, semantic_logits
    from mona_peft.tasks.semantic_segmentation.task import SemanticSegmentationTask
    from mona_peft.training import main

    backbone = tmp_path / "backbone"
    build_tiny_model(model_type, **overrides).save_pretrained(backbone)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        backbone
    )
    data, rng = tmp_path / "data", np.random.default_rng(0)
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(data / "images" / f"{i}.png")
        Image.fromarray(rng.integers(0, 3, (32, 32), dtype=np.uint8), mode="L").save(data / "masks" / f"{i}.png")
    (data / "id2label.json").write_text(json.dumps({0: "background", 1: "a", 2: "b"}))
    out, repo_id = tmp_path / "out", f"{USER}/mona-tiny-{segmenter}"
    main(
        ["--model_name_or_path", str(backbone), "--train_dir", str(data), "--output_dir", str(out),
         "--max_train_steps", "2", "--per_device_train_batch_size", "2", "--report_to", "none",
         "--image_size", "32", "--decoder_hidden_size", "16", "--num_queries", "4", "--segmenter", segmenter,
         "--push_to_hub", "--hub_model_id", repo_id, "--hub_token", TOKEN],
        task=SemanticSegmentationTask,
    )  # fmt: skip
    assert {"segmentation_config.json", "preprocessor_config.json", "adapter_model.safetensors"} <= set(
        hub.files(repo_id)
    )
    image_path = data / "images" / "0.png"
    model = PeftModel.from_pretrained(load_segmentation_base(out), out).eval()
    with torch.no_grad():
        pixels = AutoImageProcessor.from_pretrained(out)(images=Image.open(image_path), return_tensors="pt")
        expected = semantic_logits(model(**pixels))

    # The card's own snippet, as a user copies it from the Hub, in a fresh process that only knows the test Hub.
    card = Path(HfApi(endpoint=hub.url, token=TOKEN).hf_hub_download(repo_id, "README.md", cache_dir=tmp_path / "c"))
    snippet = card_snippet(card, "load_segmentation_base")
    assert repo_id in snippet
    # the pipeline answers with the trained class names (every class of this random model's prediction is one)
    script = (
        "import sys\nfrom PIL import Image\nimage = Image.open(sys.argv[1])\n"
        + snippet
        + "assert segments and {s['label'] for s in segments} <= {'background', 'a', 'b'}, segments\n"
        + "from mona_peft.tasks.semantic_segmentation.model import semantic_logits\n"
        + "torch.save(semantic_logits(outputs), sys.argv[-1])\n"
    )
    torch.testing.assert_close(logits_in_fresh_process(hub, tmp_path, script, str(image_path)), expected)
    assert hub.state.unhandled == []


@pytest.mark.parametrize("task_name", ["object-detection", "instance-segmentation"])
def test_detection_adapters_are_pushed_and_their_cards_snippets_reload_them_in_a_fresh_process(
    task_name, hub, tmp_path
):
    from conftest import card_snippet, save_tiny_backbone_checkpoint, write_digit_coco_folders
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoImageProcessor

    from mona_peft.tasks.instance_segmentation import load_instance_segmentation_base
    from mona_peft.tasks.instance_segmentation.task import InstanceSegmentationTask
    from mona_peft.tasks.object_detection import load_detection_base
    from mona_peft.tasks.object_detection.task import ObjectDetectionTask
    from mona_peft.training import main

    task, load_base, config_file, size_flags, output = {
        "object-detection": (
            ObjectDetectionTask, load_detection_base, "detection_config.json",
            ["--image_square_size", "32", "--d_model", "32"], "pred_boxes",
        ),
        "instance-segmentation": (
            InstanceSegmentationTask, load_instance_segmentation_base, "instance_segmentation_config.json",
            ["--image_height", "32", "--image_width", "32", "--hidden_dim", "32"], "masks_queries_logits",
        ),
    }[task_name]  # fmt: skip
    backbone = save_tiny_backbone_checkpoint(tmp_path / "backbone")
    data, _ = write_digit_coco_folders(tmp_path / "data", train=4, validation=1)
    out, repo_id = tmp_path / "out", f"{USER}/mona-tiny-{task_name}"
    main(
        ["--model_name_or_path", backbone, "--train_dir", str(data), "--validation_dir", str(data),
         "--output_dir", str(out), "--max_train_steps", "2", "--per_device_train_batch_size", "2", "--report_to",
         "none", "--num_queries", "5", *size_flags, "--push_to_hub", "--hub_model_id", repo_id, "--hub_token", TOKEN],
        task=task,
    )  # fmt: skip
    assert {config_file, "preprocessor_config.json", "adapter_model.safetensors", "README.md"} <= set(
        hub.files(repo_id)
    )
    image_path = next(data.glob("*.png"))
    model = PeftModel.from_pretrained(load_base(out), out).eval()
    with torch.no_grad():
        pixels = AutoImageProcessor.from_pretrained(out)(
            images=Image.open(image_path).convert("RGB"), return_tensors="pt"
        )
        expected = getattr(model(**pixels), output)

    # The card's own snippet, as a user copies it from the Hub, in a fresh process that only knows the test Hub.
    card = Path(HfApi(endpoint=hub.url, token=TOKEN).hf_hub_download(repo_id, "README.md", cache_dir=tmp_path / "c"))
    snippet = card_snippet(card, load_base.__name__)
    assert repo_id in snippet
    # the pipeline answers with the trained class names (at threshold 0, every query is an answer)
    from mona_peft.tasks.object_detection.data import DETECTION_CLASSES  # the classes write_digit_coco_folders writes

    answers = {
        "object-detection": "pipeline('object-detection', model=model, image_processor=processor)(image, threshold=0)",
        "instance-segmentation": "segmenter(image, subtask='instance', threshold=0)",
    }[task_name]
    script = (
        "import sys\nfrom PIL import Image\nimage = Image.open(sys.argv[1]).convert('RGB')\n"
        + snippet
        + f"labels = {{answer['label'] for answer in {answers}}}\n"
        + f"assert labels and labels <= {set(DETECTION_CLASSES)!r}, labels\n"
        + f"torch.save(outputs.{output}, sys.argv[-1])\n"
    )
    torch.testing.assert_close(logits_in_fresh_process(hub, tmp_path, script, str(image_path)), expected)
    assert hub.state.unhandled == []
