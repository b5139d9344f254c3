"""``VPTModel``: the PEFT tuner that adds VPT prompt tokens to a transformers Swin/ViT-family backbone."""

from __future__ import annotations

import re
from typing import Any

from peft.tuners.tuners_utils import check_target_module_exists
from torch import nn

from ..architectures import SUPPORTED_ARCHITECTURES, supported_model_types
from ..tuner_utils import WrappingTuner
from .config import VPTConfig
from .layer import PromptStream, VPTLayer, prompt_init_bound


class VPTModel(WrappingTuner):
    """Adds VPT-shallow or VPT-deep prompts to a supported backbone.

    Created by ``peft.get_peft_model(model, VPTConfig(...))`` after ``import mona_peft``. PEFT's own prompt-learning
    classes feed prompts through ``inputs_embeds``, which transformers' vision models do not take, so VPT is a tuner
    that wraps every transformer block in a ``VPTLayer`` (see ``mona_peft.tuners.vpt.layer`` for the two token layouts).
    VPT is not mergeable (``merge_and_unload`` raises); ``unload()`` returns the untouched base model.

    Example (the imports and ``base`` as in the example of :class:`~mona_peft.tuners.tuner_utils.WrappingTuner`):

        ```py
        >>> model = get_peft_model(base, mona_peft.VPTConfig(num_prompts=5, modules_to_save=["classifier"]))
        ```
    """

    prefix: str = "vpt_"
    tuner_layer_cls = VPTLayer
    display_name = "VPT"
    merge_error = (
        "VPT adapters cannot be merged into the base model: prompts are extra input tokens, not a change of weights."
    )
    # VPT wraps every block (blocks without prompts of their own carry the incoming ones), which only the config can
    # say: a state_dict names just the blocks that own prompts.
    inject_from_state_dict = False

    def _pre_injection_hook(self, model: nn.Module, config: VPTConfig, adapter_name: str) -> None:
        super()._pre_injection_hook(model, config, adapter_name)
        if self.architecture.spec.prompt_layout is None:
            usable = [t for t in supported_model_types() if SUPPORTED_ARCHITECTURES[t].prompt_layout is not None]
            raise ValueError(
                f"VPT does not support model_type '{self.architecture.spec.model_type}' (see the note on it in "
                f"mona_peft.tuners.architectures); VPT supports: {', '.join(usable)}."
            )
        if not hasattr(self, "prompt_stream"):
            self.prompt_stream = PromptStream()

    def _after_injection(self, model: nn.Module) -> None:
        # No checkpoint input hooks on transformers' layers: VPTLayer checkpoints its block itself, with the prompts as
        # inputs. timm checkpoints the whole sequence of blocks from its model or stage, which needs them.
        timm_regions = [region for region in self._checkpointed_regions(model) if hasattr(region, "grad_checkpointing")]
        self._attach_checkpoint_input_hooks(model, timm_regions)
        self._assign_roles(model)
        self._attach_stage_checkpoint_guards(model)

    def _after_unload(self) -> None:
        self.prompt_stream.prompts = None

    # -- which blocks -------------------------------------------------------------------------------------------
    def _block_names(self, model: nn.Module) -> list[str]:
        spec = self.architecture.spec
        return [
            name
            for name, module in model.named_modules()
            if (isinstance(module, VPTLayer) or type(module).__name__ == spec.block_class)
            and not name.endswith(".base_layer")
            and re.fullmatch(spec.block_pattern, name)
        ]

    def _prepare_adapter_config(self, peft_config: VPTConfig, model_config: dict) -> VPTConfig:
        peft_config = super()._prepare_adapter_config(peft_config, model_config)
        blocks = self._block_names(self.model)
        targets = [name for name in blocks if check_target_module_exists(peft_config, name)]
        block_class = self.architecture.spec.block_class
        for name, module in self.model.named_modules():
            if name and name not in blocks and check_target_module_exists(peft_config, name):
                raise ValueError(
                    f"VPT attaches to whole transformer blocks ({block_class}), but target_modules matches '{name}', "
                    f"a {type(module).__name__}. Leave target_modules unset or match only blocks."
                )
        if not targets:
            raise ValueError(
                f"VPTConfig.target_modules={peft_config.target_modules!r} matches none of the backbone's "
                f"{len(blocks)} transformer blocks ({', '.join(blocks[:3])}, ...)."
            )
        self._injection = {"blocks": set(blocks), "targets": set(targets), "first": targets[0]}
        return peft_config

    def _check_target_module_exists(self, peft_config: VPTConfig, key: str):
        # Every block is wrapped; the config's target_modules decides which blocks own prompts.
        injection = getattr(self, "_injection", None)
        if injection is not None and key in injection["blocks"]:
            return True
        return check_target_module_exists(peft_config, key)

    def _prompt_args(self, peft_config: VPTConfig, current_key: str) -> tuple[bool, float]:
        """(whether the block at ``current_key`` owns prompts of this adapter, their initialisation bound)."""
        injection = self._injection
        targeted = current_key in injection["targets"]
        own_prompts = targeted and (peft_config.deep or current_key == injection["first"])
        config = self.architecture.config
        spec = self.architecture.spec
        return own_prompts, prompt_init_bound(spec.patch_size(config), spec.embedding_width(config))

    def _new_layer(self, target: nn.Module, adapter_name: str, peft_config: VPTConfig, current_key: str) -> VPTLayer:
        own_prompts, bound = self._prompt_args(peft_config, current_key)
        return VPTLayer(target, adapter_name, peft_config, self.architecture, self.prompt_stream, own_prompts, bound)

    def _update_layer(self, layer: VPTLayer, adapter_name: str, peft_config: VPTConfig, current_key: str) -> None:
        layer.update_layer(adapter_name, peft_config, *self._prompt_args(peft_config, current_key))

    def _assign_roles(self, model: nn.Module) -> None:
        """Give every layer its mode and handoff for every adapter (the order of the blocks decides them)."""
        layers = [(name, module) for name, module in model.named_modules() if isinstance(module, VPTLayer)]
        windows = self.architecture.spec.prompt_layout == "windows"
        for name, layer in layers:
            if windows:
                layer._downsample, layer._last_in_stage = self._stage_facts(model, name)
        adapters = dict.fromkeys(a for _, layer in layers for a in layer.vpt_num_prompts)
        for adapter in adapters:
            modes, started = [], False
            for _, layer in layers:
                owns = adapter in layer.vpt_prompts
                mode = "replace" if owns and started else "insert" if owns else "carry" if started else "off"
                started = started or owns
                modes.append(mode)
            for i, (_, layer) in enumerate(layers):
                layer.vpt_mode[adapter] = modes[i]
                if i == len(layers) - 1:
                    handoff = "end"
                elif modes[i + 1] == "replace":
                    handoff = "drop" if windows else "keep"
                elif windows and layer._last_in_stage:
                    handoff = "merge"
                else:
                    handoff = "keep"
                layer.vpt_handoff[adapter] = handoff

    def _stage_facts(self, model: nn.Module, block_name: str) -> tuple[tuple[nn.Module, ...], bool]:
        """(the stage's patch merging, or nothing; whether the block is its stage's last)."""
        list_name, _, index = block_name.rpartition(".")
        blocks = model.get_submodule(list_name)
        stage = model.get_submodule(list_name.rpartition(".")[0])
        downsample = getattr(stage, self.architecture.spec.window_modules.downsample, None)
        last = int(index) == len(blocks) - 1
        return ((downsample,) if isinstance(downsample, nn.Module) else ()), last

    def _attach_stage_checkpoint_guards(self, model: nn.Module) -> None:
        """Swin: checkpoint each block (prompts as explicit inputs), never the whole stage around the prompt stream.

        A stage (``SwinStage`` is a ``GradientCheckpointingLayer``) checkpointed as a whole would pass the prompts to
        the next stage outside its inputs and outputs: reentrant checkpointing would cut their gradient, and the
        recomputation would read a later state of the stream. Each VPT block is checkpointed on its own instead.
        """
        if self.architecture.spec.prompt_layout != "windows":
            return
        for stage in self._checkpointed_regions(model):
            self._hook_once(
                "stage_checkpoint_guard",
                stage,
                lambda module: (
                    module.register_forward_pre_hook(_suspend_checkpointing),
                    module.register_forward_hook(_restore_checkpointing, always_call=True),
                ),
            )

    # -- PEFT plumbing ------------------------------------------------------------------------------------------
    def _check_mixed_batch(self, adapter_names: list[str]) -> None:
        """Rows of one batch share one token sequence, so the adapters of a mixed batch must share their prompt
        layout (num_prompts, deep, target blocks). ``"__base__"`` rows get placeholder prompts that no token can
        attend to, so they compute the base model's outputs."""
        layouts = {
            name: (self.peft_config[name].num_prompts, self.peft_config[name].deep, self._owner_blocks(name))
            for name in adapter_names
        }
        if len(set(layouts.values())) > 1:
            described = ", ".join(f"{n} (num_prompts={v[0]}, deep={v[1]})" for n, v in layouts.items())
            raise ValueError(
                "A mixed batch can only combine VPT adapters with the same prompt layout (num_prompts, deep and "
                f"target blocks), plus '__base__' rows; got {described}. Run them in separate batches."
            )

    def _owner_blocks(self, adapter_name: str) -> tuple[str, ...]:
        return tuple(
            name
            for name, module in self.model.named_modules()
            if isinstance(module, VPTLayer) and adapter_name in module.vpt_prompts
        )


def _suspend_checkpointing(module: nn.Module, args: tuple) -> None:
    if getattr(module, "gradient_checkpointing", False):
        module.__dict__["_vpt_suspended_checkpointing"] = True
        module.gradient_checkpointing = False


def _restore_checkpointing(module: nn.Module, args: tuple, output: Any) -> None:
    if module.__dict__.pop("_vpt_suspended_checkpointing", False):
        module.gradient_checkpointing = True
