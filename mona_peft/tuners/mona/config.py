"""Configuration of Mona (multi-cognitive visual adapter)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from peft.utils.other import get_pattern_key

from ..config_utils import BottleneckConfig, ConfigTypeError, check_bool, check_choice, check_fraction
from ..registry import add_peft_type

MONA = add_peft_type("mona")

InitWeights = Literal["official", "identity"]
PrefixTokenMode = Literal["adapt", "skip"]


@dataclass
class MonaConfig(BottleneckConfig):
    """Configuration for [`MonaModel`]: two Monas per transformer block, on the residual stream.

    Mona (Yin et al., "5%>100%: Breaking Performance Shackles of Full Fine-Tuning on Visual
    Recognition Tasks") adapts a frozen backbone with a small module placed right after the
    attention residual add and right after the MLP residual add of every block.

    Args:
        target_modules: transformer blocks to adapt, as a regex or a list of name suffixes. Defaults
            to every block of the backbone (from ``mona_peft.tuners.architectures``); restrict it to adapt
            only some stages, e.g. ``r".*layers\\.[23]\\.blocks\\.\\d+"`` for Swin's last two stages.
        exclude_modules: blocks not to adapt (same syntax as PEFT's).
        inner_dim: width of Mona's bottleneck (64 in the paper).
        inner_dim_pattern: per-Mona widths overriding ``inner_dim``: ``{regex: width}``, matched (as LoRA's
            ``rank_pattern``) against the end of ``"<block name>.mona_attn"`` / ``"<block name>.mona_mlp"`` first
            (one Mona), then of ``"<block name>"`` (both Monas of the block). A width of 0 means no Mona at that
            site (the block skips it). MiMi saves its shrunken sizes here, so ``PeftModel.from_pretrained`` rebuilds
            them; see :func:`mona_inner_dim`.
        kernel_sizes: depthwise kernels of the multi-cognitive filter, odd and positive ((3, 5, 7)).
        dropout: dropout before the up projection (0.1 in the paper).
        init_weights: ``"official"`` initialises both projections trunc-normal(std=0.02) with zero
            bias, as the official code; ``"identity"`` additionally zeroes the up projection so the
            adapted model starts exactly as the base model.
        prefix_tokens: what Mona does with tokens that have no place on the patch grid (CLS,
            distillation, register tokens of plain ViTs). ``"adapt"`` (default) sends them along
            Mona's path without the depthwise spatial filter (scaled norm, down projection, the
            per-token 1x1 projection, GELU, up projection), so the token the classifier reads is
            adapted too; ``"skip"`` leaves them unchanged.
        gradient_checkpointing: keep only each Mona's input for the backward pass and recompute its inside (scaled
            norm, projections, filter, GELU, dropout with the same mask) during backward, with
            ``torch.utils.checkpoint`` (``use_reentrant=False``). Less training memory at dense resolutions for about
            one more Mona forward per step; the results are the same. Only Mona is recomputed, not the block (for
            that, the model's own ``gradient_checkpointing_enable()``). Off by default: not yet measured to pay.
        modules_to_save: modules trained and saved in full, e.g. ``["classifier"]``.
        base_model_type: the backbone's ``model_type``, recorded when the adapter is created (loading onto another
            architecture raises).

    Example (the imports and ``model`` as in the example of :class:`~mona_peft.tuners.config_utils.WrappingConfig`):

        ```py
        >>> model = get_peft_model(model, mona_peft.MonaConfig(modules_to_save=["classifier"]))
        ```
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Blocks to adapt (regex or name suffixes); default: every block of the backbone."},
    )
    inner_dim_pattern: dict[str, int] | None = field(
        default=None,
        metadata={"help": "Per-Mona widths {regex: width} ('<block>.mona_attn', '<block>.mona_mlp'); 0: no Mona."},
    )
    kernel_sizes: tuple[int, ...] = field(
        default=(3, 5, 7), metadata={"help": "Odd depthwise kernel sizes of the multi-cognitive filter."}
    )
    dropout: float = field(default=0.1, metadata={"help": "Dropout before the up projection."})
    init_weights: InitWeights = field(
        default="official", metadata={"help": "'official' (trunc-normal 0.02) or 'identity' (zero up projection)."}
    )
    prefix_tokens: PrefixTokenMode = field(
        default="adapt",
        metadata={"help": "'adapt': prefix tokens take Mona's path without the spatial filter; 'skip': unchanged."},
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Keep only Mona's input for the backward pass and recompute its inside (less memory)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = MONA
        owner = "MonaConfig"
        if isinstance(self.kernel_sizes, (str, bytes)) or not isinstance(self.kernel_sizes, (list, tuple)):
            raise ConfigTypeError(
                f"MonaConfig.kernel_sizes must be a list of odd kernel sizes, got {self.kernel_sizes!r} "
                f"({type(self.kernel_sizes).__name__})."
            )
        self.kernel_sizes = tuple(self.kernel_sizes)
        if not self.kernel_sizes:
            raise ValueError("MonaConfig.kernel_sizes must name at least one kernel size.")
        bad = [k for k in self.kernel_sizes if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0]
        if bad:
            raise ValueError(
                f"MonaConfig.kernel_sizes must be positive odd integers (so 'same' padding keeps the grid), got {bad}."
            )
        self.dropout = check_fraction(owner, "dropout", self.dropout)
        check_choice(owner, "init_weights", self.init_weights, ("official", "identity"))
        check_choice(owner, "prefix_tokens", self.prefix_tokens, ("adapt", "skip"))
        self.gradient_checkpointing = check_bool(owner, "gradient_checkpointing", self.gradient_checkpointing)


def mona_inner_dim(config: MonaConfig, block_name: str, site: str) -> int:
    """Width of the Mona at ``site`` (``"attn"`` or ``"mlp"``) of the block ``block_name``; 0: no Mona there.

    ``config.inner_dim_pattern`` is looked up for ``"<block_name>.mona_<site>"``, then for ``"<block_name>"``
    (keys are regexes matched against the end of the name, as LoRA's ``rank_pattern``); else ``config.inner_dim``.
    """
    pattern = config.inner_dim_pattern or {}
    for name in (f"{block_name}.mona_{site}", block_name):
        key = get_pattern_key(list(pattern), name)
        if key in pattern:
            return int(pattern[key])
    return int(config.inner_dim)
