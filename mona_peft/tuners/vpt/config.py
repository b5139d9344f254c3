"""Configuration of VPT (visual prompt tuning)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config_utils import WrappingConfig, check_bool, check_fraction, check_int, check_target_modules
from ..registry import add_peft_type

VPT = add_peft_type("vpt")


@dataclass
class VPTConfig(WrappingConfig):
    """Configuration for [`VPTModel`]: learnable prompt tokens in a frozen Swin/ViT-family backbone.

    VPT (Jia et al., "Visual Prompt Tuning", ECCV 2022) adds ``num_prompts`` learnable tokens to the
    token sequence of a frozen transformer, after the embeddings (so they get no position embedding),
    and trains only them and the task head.

    * **VPT-shallow** (``deep=False``): one set of prompts, inserted before the first adapted block and
      carried through every later block.
    * **VPT-deep** (``deep=True``): every adapted block has its own set; before each adapted block after
      the first, the prompt outputs of the previous block are discarded and replaced by that block's set.

    Plain ViTs (ViT, DeiT, DINOv2, DINOv2 with registers) get the prompts right after their prefix
    tokens (CLS, distillation, registers). Swin gets the paper's windowed variant: the prompts join
    every attention window (relative-position bias and shift mask padded with zeros for them), their
    outputs are averaged over the windows, and patch merging merges them too (shallow) or the next
    stage replaces them (deep). Either way the prompts are removed after the backbone's last block, so
    the final norm, pooling and head see exactly the tokens they saw before.

    Args:
        num_prompts: prompt tokens per set (the paper searches 1 to 200; 10 is a common default).
        deep: ``False`` for VPT-shallow, ``True`` for VPT-deep.
        prompt_dropout: dropout on the prompt parameters each time they enter the sequence (0.0 in the paper's
            default recipe).
        target_modules: transformer blocks that get prompts, as a regex or a list of name suffixes. Defaults to every
            block of the backbone (from ``mona_peft.tuners.architectures``). Shallow prompts enter before the first
            matched block; deep prompts are held by every matched block. Prompts are carried through later unmatched
            blocks and removed after the backbone's last block, as in the paper's prompt-depth ablations.
        modules_to_save: modules trained and saved in full, e.g. ``["classifier"]``.

    Prompts are initialised uniform(-b, b) with ``b = sqrt(6 / (3 * patch_h * patch_w + d))`` (the paper's
    Xavier-uniform bound; ``d`` is the width of the patch embedding).

    Example (the imports and ``model`` as in the example of :class:`~mona_peft.tuners.config_utils.WrappingConfig`):

        ```py
        >>> config = mona_peft.VPTConfig(num_prompts=10, deep=True, modules_to_save=["classifier"])
        >>> model = get_peft_model(model, config)
        ```
    """

    num_prompts: int = field(default=10, metadata={"help": "Prompt tokens per set."})
    deep: bool = field(
        default=False, metadata={"help": "False: VPT-shallow (one set); True: VPT-deep (one set per block)."}
    )
    prompt_dropout: float = field(default=0.0, metadata={"help": "Dropout on the prompts as they enter the sequence."})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Blocks that get prompts (regex or name suffixes); default: every block of the backbone."},
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained and saved in full, e.g. ['classifier']."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = VPT
        owner = "VPTConfig"
        check_int(owner, "num_prompts", self.num_prompts)
        check_bool(owner, "deep", self.deep)
        self.prompt_dropout = check_fraction(owner, "prompt_dropout", self.prompt_dropout)
        self.target_modules = check_target_modules(owner, "target_modules", self.target_modules)
