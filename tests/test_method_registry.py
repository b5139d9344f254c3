"""One declaration per method: the scripts, model cards, the benchmark and MiMi read it; nothing else lists methods."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_tiny_swin
from harness.runner import BenchmarkConfig
from huggingface_hub import ModelCard
from peft import PeftModel

from mona_peft.sharing.model_card import render_model_card
from mona_peft.tasks.image_classification import ImageClassificationTask
from mona_peft.training import RunConfig, parse_args
from mona_peft.tuners import registry as registration
from mona_peft.tuners.methods import build_method, is_adapter_parameter
from mona_peft.tuners.registry import MethodSpec, get_method, methods

HEAD = ["classifier"]
CARD = dict(
    base_model="microsoft/swin-tiny-patch4-window7-224",
    dataset="digits",
    metrics={"top1": 0.5},
    hyperparameters={"learning_rate": 1e-3},
    trainable_params=10,
    total_params=100,
    task=ImageClassificationTask.card,
)


def test_every_declared_method_builds_with_its_defaults_and_names_what_it_saves():
    assert list(methods()) == [
        "full", "linear", "bitfit", "ln_tuning", "partial1", "lora", "adapter", "adaptformer", "vpt_shallow",
        "vpt_deep", "mona",
    ]  # fmt: skip
    for name, spec in methods().items():
        model = build_method(build_tiny_swin(), name, HEAD)
        assert isinstance(model, PeftModel) is not spec.saves_whole_model, name
        added = [n for n, p in model.named_parameters() if p.requires_grad and spec.is_own_parameter(n)]
        assert bool(added) is (spec.peft_config is not None), name  # PEFT methods add parameters, the others none
    assert {name for name, spec in methods().items() if spec.shrinkable} == {"mona", "adapter"}


@pytest.mark.parametrize(
    ("method", "option", "accepted"),
    [("lora", "inner_dim", "alpha, rank"), ("vpt_deep", "inner_dim", "num_prompts"), ("full", "rank", "none")],
)
def test_an_option_the_method_does_not_take_is_named(method, option, accepted):
    with pytest.raises(ValueError, match=rf"'{method}' does not accept the option\(s\) \['{option}'\]; .*{accepted}"):
        build_method(build_tiny_swin(), method, HEAD, **{option: 8})


def test_the_training_flags_check_method_options_against_the_declaration():
    with pytest.raises(SystemExit, match="--inner_dim does not apply to --method lora"):
        parse_args(["--method", "lora", "--inner_dim", "8"])
    with pytest.raises(SystemExit, match="--mimi_target shrinks adapter and mona adapters, not lora"):
        parse_args(["--method", "lora", "--mimi_target", "4x"])
    config = parse_args(["--method", "adaptformer", "--inner_dim", "16"])
    assert isinstance(config, RunConfig) and config.method_options() == {"inner_dim": 16}
    assert get_method("adaptformer").resolve_options(config.method_options()) == {"inner_dim": 16, "scale": 0.1}


def test_mona_recomputation_defaults_per_task_and_the_flag_overrides_it():
    from mona_peft.tasks.instance_segmentation.task import InstanceSegmentationTask
    from mona_peft.tasks.object_detection.task import ObjectDetectionTask
    from mona_peft.tasks.semantic_segmentation.task import SemanticSegmentationTask

    dense = (SemanticSegmentationTask, ObjectDetectionTask, InstanceSegmentationTask)
    assert all(task.method_defaults["mona"] == {"gradient_checkpointing": True} for task in dense)
    assert ImageClassificationTask.method_defaults == {}
    on = SemanticSegmentationTask.method_defaults["mona"]
    assert parse_args(["--inner_dim", "8"]).method_options(on) == {"gradient_checkpointing": True, "inner_dim": 8}
    off = parse_args(["--mona_gradient_checkpointing", "false"])
    assert off.method_options(on) == {"gradient_checkpointing": False}
    assert parse_args(["--mona_gradient_checkpointing", "true"]).method_options() == {"gradient_checkpointing": True}
    with pytest.raises(
        SystemExit, match=r"--mona_gradient_checkpointing does not apply to --method lora \(it takes --alpha, --rank\)"
    ):
        parse_args(["--method", "lora", "--mona_gradient_checkpointing", "true"])
    with pytest.raises(SystemExit, match=r"--inner_dim does not apply to --method vpt_deep \(it takes --num_prompts\)"):
        parse_args(["--method", "vpt_deep", "--inner_dim", "8"])
    with pytest.raises(
        SystemExit, match=r"--num_prompts does not apply to --method mona \(it takes --inner_dim, --mona_g"
    ):
        parse_args(["--num_prompts", "8"])


@pytest.mark.parametrize("method", ["vpt_shallow", "vpt_deep", "adapter", "mona", "partial1"])
def test_model_cards_take_the_method_wording_from_the_declaration(method):
    spec = get_method(method)
    text = render_model_card(method=method, whole_model=spec.saves_whole_model, **CARD)
    assert spec.display_name in text and spec.summary in text
    assert method in ModelCard(text).data.tags


def test_a_newly_declared_method_reaches_the_cli_the_card_the_benchmark_and_the_lr_groups(monkeypatch):
    monkeypatch.setattr(registration, "_METHODS", dict(registration._METHODS))
    lora = get_method("lora")
    registration.declare_method(
        MethodSpec(
            "tiny_lora",
            "Tiny LoRA",
            "LoRA of rank 2 on the query and value projections.",
            options={"rank": 2},
            option_help={"rank": "LoRA's rank (alpha follows it)."},
            peft_config=lambda model, head, rank: lora.peft_config(model, head, rank=rank, alpha=rank),
            parameter_markers=(".lora_",),
        )
    )
    assert parse_args(["--method", "tiny_lora", "--model_name_or_path", "x"]).method == "tiny_lora"
    assert "tiny_lora" in BenchmarkConfig().methods
    assert "LoRA of rank 2" in render_model_card(method="tiny_lora", **CARD)
    model = build_method(build_tiny_swin(), "tiny_lora", HEAD)
    lora_a = [p for n, p in model.named_parameters() if n.endswith("lora_A.default.weight")]
    assert lora_a and all(p.shape[0] == 2 for p in lora_a)
    assert all(is_adapter_parameter(n) for n, p in model.named_parameters() if ".lora_" in n)


def test_a_declaration_must_say_how_the_method_trains():
    with pytest.raises(ValueError, match="exactly one of peft_config"):
        MethodSpec("nothing", "Nothing", "Trains nothing.")


def test_the_registry_imports_no_method_package():
    """The method packages import the registry, never the other way round (no import cycle to work around)."""
    tree = ast.parse(Path(registration.__file__).read_text())
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level > 0]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [name for name in imported if name.startswith("mona_peft") or not name.split(".")[0]], imported
    assert all(not isinstance(node, ast.ImportFrom) or node.level == 0 for node in ast.walk(tree))


def test_mimi_names_the_methods_it_can_shrink():
    from mona_peft.mimi import MiMi, MiMiSchedule

    with pytest.raises(ValueError, match="MiMi shrinks the adapters of these methods: adapter, mona"):
        MiMi(build_method(build_tiny_swin(), "lora", HEAD), MiMiSchedule(rho=0.5, compression=4))


THROWAWAY_PACKAGE = '''
"""A method that exists only for this test: a narrow Houlsby adapter with a width option of its own."""

from mona_peft.tuners.houlsby import HoulsbyConfig, HoulsbySite
from mona_peft.tuners.registry import MethodSpec, declare_method


class ThrowawaySite(HoulsbySite):
    kind = "throwaway"


declare_method(
    MethodSpec(
        "throwaway",
        "Throwaway adapter",
        "A narrow bottleneck adapter, declared from a package outside mona_peft.",
        options={"throwaway_width": 3},
        option_help={"throwaway_width": "Width of the throwaway adapters."},
        peft_config=lambda model, head, throwaway_width: HoulsbyConfig(inner_dim=throwaway_width, modules_to_save=head),
        parameter_markers=(".houlsby_",),
        site=ThrowawaySite,
        dense=True,
        step_cost=5.0,
    )
)
'''

THROWAWAY_CHECKS = """
import sys
import throwaway_method  # one folder: the declaration is all a method needs
from conftest import build_tiny_swin
from harness.kinds import dense_methods
from harness.runner import BenchmarkConfig, grid_jobs
from harness.speed import SpeedConfig
from mona_peft.mimi import MiMi, MiMiSchedule, site_kinds
from mona_peft.training import parse_args
from mona_peft.training.config import method_flags
from mona_peft.tuners.methods import build_method
import test_peft_checklist

config = parse_args(["--method", "throwaway", "--throwaway_width", "5", "--mimi_target", "2x"])
assert config.options == {"throwaway_width": 5}, config.options
assert method_flags()["throwaway_width"].methods == ["throwaway"]
try:
    parse_args(["--method", "lora", "--throwaway_width", "5"])
except SystemExit as error:
    assert "--throwaway_width does not apply to --method lora" in str(error), error
else:
    raise AssertionError("--throwaway_width was accepted for lora")
assert throwaway_method.ThrowawaySite in site_kinds()
model = build_method(build_tiny_swin(), "throwaway", ["classifier"], throwaway_width=4)
assert MiMi(model, MiMiSchedule(rho=0.5, compression=2)).initial_size > 0
assert "throwaway" in dense_methods() and "throwaway" in SpeedConfig().methods
jobs = grid_jobs(BenchmarkConfig(methods=["lora", "throwaway", "mona"], tasks=["digits"], seeds=[0], lr_grid=[1e-3]))
assert [job.method for job in jobs] == ["throwaway", "mona", "lora"], jobs  # the slowest (step_cost) first
assert "throwaway" in test_peft_checklist.METHODS
print("ok")
"""


def test_a_method_declared_in_a_package_of_its_own_reaches_every_method_list(tmp_path):
    """A new method is a folder plus its import: its declaration alone puts it in the CLI flags, MiMi's sites, the
    dense benchmarks, the benchmark's cost order and the checklist's case table (in a fresh process, whose
    registries start from the declarations)."""
    (tmp_path / "throwaway_method").mkdir()
    (tmp_path / "throwaway_method" / "__init__.py").write_text(THROWAWAY_PACKAGE)
    tests = Path(__file__).resolve().parent
    path = os.pathsep.join([str(tmp_path), str(tests), str(tests.parent / "benchmarks")])
    result = subprocess.run(
        [sys.executable, "-c", THROWAWAY_CHECKS],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
