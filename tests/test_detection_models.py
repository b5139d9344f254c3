"""Detectors and universal segmenters around a Swin backbone, with every method: what trains, one step, the reload.

Each model is built tiny (d_model 32, one or two encoder/decoder layers, 10 queries, a four-stage Swin with one block
per stage) from its config, seeded, so a "freshly built base" is the same frozen model again. ``head_modules`` names
everything outside the backbone (input projections, transformer encoder/decoder, query embeddings, prediction heads,
pixel decoder); every method trains those in full, and the backbone only through the method.

Deformable DETR, DAB-DETR and D-FINE take the whole-model methods only (their PEFT cases assert the error, then
xfail): PEFT 0.21 reads any ``_tied_weights_keys`` of a transformers 5 model as ties to the input embeddings and asks
the model for them, which these detectors do not have; D-FINE's heads ``class_embed.N``/``bbox_embed.N`` are also
suffixes of its decoder's copies, which ``build_method`` refuses first.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import torch
import transformers as tf
from peft import PeftModel
from torch import nn

import mona_peft  # noqa: F401  (registers the methods with PEFT)
from mona_peft.tuners.architectures import find_blocks, head_modules, resolve_architecture
from mona_peft.tuners.methods import adamw, build_method
from mona_peft.tuners.registry import MethodSpec, methods

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 64
ALL_STAGES = ("stage1", "stage2", "stage3", "stage4")


def _swin(config_class: type = tf.SwinConfig, stages: tuple[str, ...] = ALL_STAGES):
    # drop_path_rate=0: stochastic depth would make the training step's outputs random.
    return config_class(
        image_size=IMAGE_SIZE,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        drop_path_rate=0.0,
        out_features=list(stages),
    )


# The DETR family's transformer, as small as it builds.
DETR = dict(
    d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
    encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=10, num_labels=3,
)  # fmt: skip
# RT-DETR and D-FINE: their hybrid encoder reads stages 2-4 (32, 64, 128 channels at strides 8, 16, 32).
RT_DETR = dict(
    encoder_hidden_dim=32, encoder_in_channels=[32, 64, 128], feat_strides=[8, 16, 32], encoder_layers=1,
    encoder_ffn_dim=32, encoder_attention_heads=2, d_model=32, num_queries=10, decoder_in_channels=[32, 32, 32],
    decoder_ffn_dim=32, decoder_layers=1, decoder_attention_heads=2, decoder_n_points=2, num_denoising=4,
    anchor_image_size=None, num_labels=3,
)  # fmt: skip
MASK2FORMER = dict(
    feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=32, dim_feedforward=32,
    encoder_layers=1, decoder_layers=2, num_attention_heads=2, num_queries=10, num_labels=3,
)  # fmt: skip
# Deformable DETR and D-FINE tie every prediction head to the first (`bbox_embed.(?![0])\d+` -> `bbox_embed.0`);
# transformers refuses a tie with nothing to tie, so they need two decoder layers. Conditional and DAB-DETR use their
# `query_scale` from the second decoder layer on: with one layer it would get no gradient.
TWO_DECODER_LAYERS = {**DETR, "decoder_layers": 2}


@dataclass(frozen=True)
class Detector:
    """One tiny model: how to build it, what ``head_modules`` must say, and what it predicts."""

    build: Callable[[], nn.Module]
    heads: list[str]
    masks: bool = False  # predicts masks (class_queries_logits, masks_queries_logits), else boxes
    # Backbone parameters no forward pass reads (SwinBackbone never applies SwinModel's final norm): no gradient.
    unused: tuple[str, ...] = ("swin.layernorm.",)
    # Why PEFT's methods cannot wrap this model: (exception, message pattern) of build_method, or None.
    peft_error: tuple[type[Exception], str] | None = None


_NO_EMBEDDINGS = (NotImplementedError, r"get_input_embeddings")

MODELS: dict[str, Detector] = {
    "detr": Detector(
        # DETR reads only the last feature map.
        lambda: tf.DetrForObjectDetection(tf.DetrConfig(backbone_config=_swin(stages=("stage4",)), **DETR)),
        [
            "model.query_position_embeddings",
            "model.input_projection",
            "model.encoder",
            "model.decoder",
            "class_labels_classifier",
            "bbox_predictor",
        ],
    ),
    "conditional_detr": Detector(
        lambda: tf.ConditionalDetrForObjectDetection(
            tf.ConditionalDetrConfig(backbone_config=_swin(stages=("stage4",)), **TWO_DECODER_LAYERS)
        ),
        [
            "model.query_position_embeddings",
            "model.input_projection",
            "model.encoder",
            "model.decoder",
            "class_labels_classifier",
            "bbox_predictor",
        ],
    ),
    "deformable_detr": Detector(
        lambda: tf.DeformableDetrForObjectDetection(
            tf.DeformableDetrConfig(
                backbone_config=_swin(stages=ALL_STAGES[1:]),
                encoder_n_points=2,
                decoder_n_points=2,
                **TWO_DECODER_LAYERS,
            )
        ),
        [
            "model.input_proj.0",
            "model.input_proj.1",
            "model.input_proj.2",
            "model.input_proj.3",
            "model.query_position_embeddings",
            "model.encoder",
            "model.decoder",
            "model.reference_points",
            "class_embed.0",
            "class_embed.1",
            "bbox_embed.0",
            "bbox_embed.1",
        ],
        peft_error=_NO_EMBEDDINGS,
    ),
    "dab_detr": Detector(
        lambda: tf.DabDetrForObjectDetection(
            tf.DabDetrConfig(
                backbone_config=_swin(stages=("stage4",)),
                hidden_size=32,
                **{k: v for k, v in TWO_DECODER_LAYERS.items() if k != "d_model"},
            )
        ),
        # bbox_predictor is tied to model.decoder.bbox_embed (the same tensors).
        [
            "model.query_refpoint_embeddings",
            "model.input_projection",
            "model.encoder",
            "model.decoder",
            "class_embed",
            "bbox_predictor",
        ],
        peft_error=_NO_EMBEDDINGS,
    ),
    "rt_detr": Detector(
        lambda: tf.RTDetrForObjectDetection(tf.RTDetrConfig(backbone_config=_swin(stages=ALL_STAGES[1:]), **RT_DETR)),
        # The input projections are ModuleLists (PEFT cannot wrap one), named by their elements; the class and box
        # heads live inside the decoder.
        [
            "model.encoder_input_proj.0",
            "model.encoder_input_proj.1",
            "model.encoder_input_proj.2",
            "model.encoder",
            "model.denoising_class_embed",
            "model.enc_output",
            "model.enc_score_head",
            "model.enc_bbox_head",
            "model.decoder_input_proj.0",
            "model.decoder_input_proj.1",
            "model.decoder_input_proj.2",
            "model.decoder",
        ],
    ),
    "d_fine": Detector(
        lambda: tf.DFineForObjectDetection(
            tf.DFineConfig(backbone_config=_swin(stages=ALL_STAGES[1:]), **{**RT_DETR, "decoder_layers": 2})
        ),
        # class_embed.N / bbox_embed.N are tied to model.decoder.class_embed.N / bbox_embed.N, and are suffixes of
        # those names: PEFT's modules_to_save would wrap the decoder's copies twice.
        [
            "model.encoder_input_proj.0",
            "model.encoder_input_proj.1",
            "model.encoder_input_proj.2",
            "model.encoder",
            "model.denoising_class_embed",
            "model.enc_output",
            "model.enc_score_head",
            "model.enc_bbox_head",
            "model.decoder",
            "class_embed.0",
            "class_embed.1",
            "bbox_embed.0",
            "bbox_embed.1",
        ],
        peft_error=(ValueError, r"'class_embed.0' also matches 'model.decoder.class_embed.0'"),
    ),
    "mask2former": Detector(
        lambda: tf.Mask2FormerForUniversalSegmentation(tf.Mask2FormerConfig(backbone_config=_swin(), **MASK2FORMER)),
        ["model.pixel_level_module.decoder", "model.transformer_module", "class_predictor"],
        masks=True,
    ),
    "maskformer": Detector(
        lambda: tf.MaskFormerForInstanceSegmentation(
            tf.MaskFormerConfig(
                backbone_config=_swin(tf.MaskFormerSwinConfig),
                decoder_config=tf.DetrConfig(**DETR),
                mask_feature_size=32,
                fpn_feature_size=32,
                num_queries=10,
                num_labels=3,
            )
        ),
        ["model.pixel_level_module.decoder", "model.transformer_module", "class_predictor", "mask_embedder"],
        masks=True,
        # MaskFormer's Swin backbone reads the stages' hidden states, never the model's final norm.
        unused=("pixel_level_module.encoder.model.layernorm.",),
    ),
}
#: Methods that train (some of) the backbone's norms themselves.
TRAIN_BACKBONE_NORMS = frozenset({"full", "bitfit", "partial1", "ln_tuning"})
PEFT_PREFIX = "base_model.model."
HEAD_COPY = ".modules_to_save.default."


def build(name: str) -> nn.Module:
    """The tiny ``name`` model, seed 0, eval mode: the same weights on every call."""
    torch.manual_seed(0)
    return MODELS[name].build().eval()


def pixel_values(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))


def targets(name: str, batch: int = 2) -> dict:
    """Real labels: two objects per image (boxes as normalised cx, cy, w, h; or binary masks and their classes)."""
    generator = torch.Generator().manual_seed(1)
    if MODELS[name].masks:
        return dict(
            mask_labels=[
                (torch.rand(2, IMAGE_SIZE, IMAGE_SIZE, generator=generator) > 0.5).float() for _ in range(batch)
            ],
            class_labels=[torch.tensor([0, 2]), torch.tensor([1, 1])][:batch],
        )
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.7, 0.3, 0.2]])
    return dict(labels=[{"class_labels": torch.tensor([1, 2]), "boxes": boxes} for _ in range(batch)])


def predictions(name: str, output) -> dict[str, torch.Tensor]:
    keys = ("class_queries_logits", "masks_queries_logits") if MODELS[name].masks else ("logits", "pred_boxes")
    return {key: getattr(output, key) for key in keys}


@dataclass(frozen=True)
class BaseFacts:
    """What the tests compare against, read off the base model before any method touches it."""

    heads: list[str]
    backbone: str  # module name of the backbone
    parameters: frozenset[str]  # every parameter name (tied ones under each of their names)
    head_parameters: frozenset[str]
    backbone_norms: frozenset[str]  # parameter names of the backbone's LayerNorms
    last_block: str
    tied: frozenset[frozenset[str]]  # groups of parameter names that are one tensor


def tied_groups(model: nn.Module) -> frozenset[frozenset[str]]:
    groups: dict[int, set[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(parameter), set()).add(name)
    return frozenset(frozenset(names) for names in groups.values() if len(names) > 1)


@cache
def base_facts(name: str) -> BaseFacts:
    model = build(name)
    heads = head_modules(model)
    spec = resolve_architecture(model).spec
    blocks = find_blocks(model, spec)
    backbone = next(
        module_name
        for module_name, module in model.named_modules()
        if getattr(getattr(module, "config", None), "model_type", None) == spec.model_type
        and blocks[0][0].startswith(f"{module_name}.")
    )
    parameters = frozenset(n for n, _ in model.named_parameters(remove_duplicate=False))
    norms = {
        f"{module_name}.{p}"
        for module_name, module in model.named_modules(remove_duplicate=False)
        if module_name.startswith(f"{backbone}.") and isinstance(module, nn.LayerNorm)
        for p, _ in module.named_parameters()
    }
    return BaseFacts(
        heads=heads,
        backbone=backbone,
        parameters=parameters,
        head_parameters=frozenset(n for n in parameters if any(n.startswith(f"{h}.") for h in heads)),
        backbone_norms=frozenset(norms),
        last_block=blocks[-1][0],
        tied=tied_groups(model),
    )


def base_name(name: str) -> str:
    """A parameter's name in the base model: PEFT's prefix and head-copy segment removed."""
    return name.removeprefix(PEFT_PREFIX).replace(HEAD_COPY, ".")


def expected_trainable(method: str, spec: MethodSpec, facts: BaseFacts, names: set[str]) -> set[str]:
    """The base-model names of what ``method`` must train, given all of the built model's parameter names."""
    if not spec.saves_whole_model:
        own = {base_name(n) for n in names if spec.is_own_parameter(n)}
        return set(facts.head_parameters) | own
    backbone = {
        "full": lambda n: True,
        "linear": lambda n: False,
        "bitfit": lambda n: n.endswith(".bias"),
        "partial1": lambda n: n.startswith(f"{facts.last_block}."),
    }
    if method not in backbone:
        pytest.fail(f"No expectation for the whole-model method {method!r}: add it to expected_trainable.")
    return set(facts.head_parameters) | {n for n in facts.parameters if backbone[method](n)}


def build_or_explain(name: str, method: str) -> nn.Module:
    """``build_method`` on a fresh tiny model. A combination the method refuses (VPT without a prompt layout) asserts
    its message and skips; one PEFT cannot wrap asserts that error and xfails."""
    spec = methods()[method]
    model = build(name)
    heads = base_facts(name).heads
    peft_error = MODELS[name].peft_error
    if peft_error is not None and not spec.saves_whole_model:
        error, message = peft_error
        with pytest.raises(error, match=message):
            build_method(model, method, heads)
        pytest.xfail(f"PEFT cannot wrap {name}'s heads: {message}")
    if method.startswith("vpt") and resolve_architecture(model).spec.prompt_layout is None:
        model_type = resolve_architecture(model).spec.model_type
        with pytest.raises(ValueError, match=f"VPT does not support model_type '{model_type}'"):
            build_method(model, method, heads)
        pytest.skip(f"VPT refuses {model_type} (prompt_layout None: no bias module to pad for prompt tokens)")
    return build_method(model, method, heads)


def train_one_step(name: str, model: nn.Module) -> tuple[float, dict[str, torch.Tensor | None], set[str]]:
    """One AdamW step on real labels: the loss, each trainable parameter's gradient, and the parameters it changed.

    No weight decay, so exactly the parameters with a non-zero gradient can change.
    """
    trainable = {n: p for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = adamw(list({id(p): p for p in trainable.values()}.values()), lr=1e-2, weight_decay=0.0)
    model.train()
    torch.manual_seed(0)  # RT-DETR's denoising queries are random
    loss = model(pixel_values=pixel_values(), **targets(name)).loss
    loss.backward()
    grads = {n: None if p.grad is None else p.grad.detach().clone() for n, p in trainable.items()}
    optimizer.step()
    model.eval()
    changed = {n for n, p in trainable.items() if not torch.equal(p.detach(), before[n])}
    return loss.item(), grads, changed


def assert_trains_exactly_its_parameters(name: str, method: str, model: nn.Module) -> set[str]:
    """(a): the method's parameters and the heads train; the backbone's weights (and norms) stay frozen."""
    spec = methods()[method]
    facts = base_facts(name)
    names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    trainable = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    # PEFT keeps each head's original as a frozen copy beside the trained one.
    as_in_base = {base_name(n) for n in trainable}
    expected = expected_trainable(method, spec, facts, names)
    assert as_in_base == expected, (
        f"{name} {method}: trains {sorted(as_in_base - expected)[:5]} too, not {sorted(expected - as_in_base)[:5]}"
    )
    if not spec.saves_whole_model:
        own = [n for n in trainable if spec.is_own_parameter(n)]
        assert own, f"{name} {method}: no parameters of the method"
        outside = [n for n in own if not base_name(n).startswith(f"{facts.backbone}.")]
        assert not outside, f"{name} {method}: method parameters outside the backbone: {outside[:3]}"
        heads_in_copies = {base_name(n) for n in trainable if HEAD_COPY in n}
        assert heads_in_copies == set(facts.head_parameters), f"{name} {method}: heads not trained through PEFT"
    if method not in TRAIN_BACKBONE_NORMS:
        norms = sorted(as_in_base & facts.backbone_norms)
        assert not norms, f"{name} {method}: the backbone's norms train: {norms[:3]}"
    return trainable


CASES = [(name, method) for name in MODELS for method in methods()]


@pytest.mark.parametrize(("name", "method"), CASES)
def test_every_method_trains_the_backbone_through_itself_and_the_heads_in_full(name, method, tmp_path):
    facts = base_facts(name)
    assert facts.heads == MODELS[name].heads
    spec = methods()[method]
    model = build_or_explain(name, method)
    trainable = assert_trains_exactly_its_parameters(name, method, model)

    # (b) One step with real labels changes what trains (only what no forward pass reads gets no gradient).
    loss, grads, changed = train_one_step(name, model)
    assert math.isfinite(loss), f"{name} {method}: loss {loss}"
    no_gradient = {n for n, g in grads.items() if g is None}
    unused = {n for n in trainable if any(fragment in n for fragment in MODELS[name].unused)}
    assert no_gradient == unused, f"{name} {method}: no gradient for {sorted(no_gradient - unused)[:5]}"
    moved = {n for n, g in grads.items() if g is not None and g.abs().sum() > 0}
    assert moved <= changed, f"{name} {method}: not updated: {sorted(moved - changed)[:5]}"
    for head in facts.heads:
        assert any(base_name(n).startswith(f"{head}.") for n in changed), f"{name} {method}: {head} did not change"
    if not spec.saves_whole_model:
        assert any(spec.is_own_parameter(n) for n in changed), f"{name} {method}: the method's parameters did not move"

    # (c) Saved, then reloaded into a freshly built base (PEFT), or rebuilt from the saved model: the same outputs.
    x = pixel_values()
    with torch.no_grad():
        expected = predictions(name, model(pixel_values=x))
    model.save_pretrained(tmp_path)
    if spec.saves_whole_model:
        reloaded = type(build(name)).from_pretrained(tmp_path).eval()
        assert tied_groups(reloaded) == facts.tied, f"{name} {method}: tied weights lost on reload"
    else:
        reloaded = PeftModel.from_pretrained(build(name), tmp_path).eval()
    with torch.no_grad():
        got = predictions(name, reloaded(pixel_values=x))
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], msg=f"{name} {method} {key}")


def test_maskformer_swin_is_a_registered_architecture_with_its_own_names():
    model = build("maskformer")
    architecture = resolve_architecture(model)
    spec = architecture.spec
    assert spec.model_type == "maskformer-swin" and spec.prompt_layout is None
    assert architecture.num_prefix_tokens == 0
    blocks = find_blocks(model)
    assert [n for n, _ in blocks] == [
        f"model.pixel_level_module.encoder.model.encoder.layers.{i}.blocks.0" for i in range(4)
    ]
    for _, block in blocks:  # every name the spec gives exists in every block
        for module in (*spec.attention_projections, spec.attention_output, spec.mlp_input, spec.mlp_output,
                       spec.mlp_output_projection, spec.post_attention_input):  # fmt: skip
            block.get_submodule(module)
    backbone = model.model.pixel_level_module.encoder
    norms = {n for n, m in backbone.named_modules() if isinstance(m, nn.LayerNorm)}
    tuned = {n for n in norms if any(n == s or n.endswith(f".{s}") for s in spec.layer_norms)}
    # LN tuning reaches every norm: the Swin's own (its final one, which the backbone never applies, included) and the
    # per-stage output norms the pixel decoder reads, as SwinBackbone's `hidden_states_norms` are.
    assert norms == tuned and {f"hidden_states_norms.{i}" for i in range(4)} <= norms


def test_tied_heads_stay_tied_under_whole_model_methods():
    """DAB-DETR's box head and its decoder's refinement head are one set of tensors (transformers ties them), as
    are D-FINE's heads and its decoder's, and Deformable DETR's per-layer heads: full fine-tuning trains them as one."""
    for name in ("dab_detr", "d_fine", "deformable_detr"):
        facts = base_facts(name)
        assert facts.tied, name
        model = build_method(build(name), "full", facts.heads)
        train_one_step(name, model)
        assert tied_groups(model) == facts.tied, name


_FRESH_PROCESS = """
import sys, torch, mona_peft, transformers
from pathlib import Path
from peft import PeftModel
x = torch.load(sys.argv[1])
for folder in map(Path, sys.argv[2:]):
    model_class = getattr(transformers, (folder / "class.txt").read_text())
    if (folder / "adapter_config.json").exists():
        model = PeftModel.from_pretrained(model_class.from_pretrained(folder.parent / "base"), folder)
    else:
        model = model_class.from_pretrained(folder)
    with torch.no_grad():
        output = model.eval()(pixel_values=x)
    keys = (folder / "keys.txt").read_text().split()
    torch.save({key: getattr(output, key) for key in keys}, folder / "reloaded.pt")
"""


def test_detr_rt_detr_and_mask2former_reload_identically_in_a_fresh_process(tmp_path):
    """Every method's saved DETR, RT-DETR and Mask2Former (adapters beside the saved base, or whole models) gives the
    same predictions in a new process that only imports mona_peft, as a user's would."""
    x = pixel_values()
    saved = []
    for name in ("detr", "rt_detr", "mask2former"):
        build(name).save_pretrained(tmp_path / name / "base")
        for method in methods():
            base = type(build(name)).from_pretrained(tmp_path / name / "base").eval()
            if method.startswith("vpt") and resolve_architecture(base).spec.prompt_layout is None:
                continue
            model = build_method(base, method, base_facts(name).heads)
            train_one_step(name, model)
            folder = tmp_path / name / method
            model.save_pretrained(folder)
            (folder / "class.txt").write_text(type(base).__name__)
            with torch.no_grad():
                expected = predictions(name, model(pixel_values=x))
            (folder / "keys.txt").write_text(" ".join(expected))
            torch.save(expected, folder / "expected.pt")
            saved.append(folder)
    torch.save(x, tmp_path / "x.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, str(tmp_path / "x.pt"), *map(str, saved)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for folder in saved:
        expected, got = torch.load(folder / "expected.pt"), torch.load(folder / "reloaded.pt")
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], msg=f"{folder.parent.name} {folder.name} {key}")
