"""VPT: visual prompt tuning (shallow and deep), as a PEFT method."""

from ..registry import MethodSpec, declare_method, register_method
from .config import VPTConfig
from .layer import PromptEmbedding, VPTLayer
from .model import VPTModel

__all__ = ["PromptEmbedding", "VPTConfig", "VPTLayer", "VPTModel"]

register_method("vpt", VPTConfig, VPTModel)


def _config_builder(deep: bool):
    def build(model, head: list[str], num_prompts: int) -> VPTConfig:
        return VPTConfig(num_prompts=num_prompts, deep=deep, modules_to_save=head)

    return build


for _deep in (False, True):
    declare_method(
        MethodSpec(
            "vpt_deep" if _deep else "vpt_shallow",
            "VPT-deep" if _deep else "VPT-shallow",
            "VPT (visual prompt tuning) adds learnable prompt tokens to the token sequence of a frozen vision "
            "transformer, after the embeddings: "
            + (
                "every block has its own set, replacing the previous block's prompt outputs."
                if _deep
                else "one set, inserted before the first block and carried through every block."
            ),
            options={"num_prompts": 10},
            option_help={"num_prompts": "Prompt tokens per set."},
            peft_config=_config_builder(_deep),
            parameter_markers=(".vpt_",),
            dense=False,
            step_cost=0.66 if _deep else 0.69,
        )
    )
