"""Configuration of AdaptFormer's parallel adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config_utils import BottleneckConfig, check_choice, check_fraction, check_number
from ..registry import add_peft_type

ADAPTFORMER = add_peft_type("adaptformer")

AdaptFormerInit = Literal["lora", "bert"]


@dataclass
class AdaptFormerConfig(BottleneckConfig):
    """Configuration for [`AdaptFormerModel`]: a scaled bottleneck parallel to the MLP of every block.

    Chen et al., "AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition" (2022):
    ``mlp(x) + scale * up(dropout(relu(down(x))))``, where ``x`` is the MLP's input. ``2 * C * inner_dim +
    inner_dim + C`` parameters per block for width ``C``.

    The official code feeds the adapter the residual stream *before* the MLP's LayerNorm; wrapping the MLP module
    (as here, so any architecture needs only the MLP's name) feeds it the normalised stream the MLP reads.

    Args:
        target_modules: MLP modules to adapt, as a regex or a list of name suffixes. Defaults to the MLP of every
            block (``mlp_output`` in ``mona_peft.tuners.architectures``; for Swin v2, whose MLP is ``intermediate`` then
            ``output``, the adapter wraps ``output`` and reads ``intermediate``'s input).
        exclude_modules: modules not to adapt (same syntax as PEFT's).
        inner_dim: bottleneck width (64 in the papers' baseline).
        inner_dim_pattern: per-module widths overriding ``inner_dim``: ``{regex: width}``, matched against the end of
            the module name as LoRA's ``rank_pattern``.
        scale: the fixed scale ``s`` of the adapter's output (0.1 in the paper).
        dropout: dropout after the ReLU (0.1 in the official code).
        init_weights: ``"lora"`` (default, the official code's choice) initialises the down projection
            kaiming-uniform and zeroes the up projection and both biases, so the adapted model starts exactly as the
            base model; ``"bert"`` draws both weights from N(0, 0.02) with zero biases (the official alternative).
        modules_to_save: modules trained and saved in full, e.g. ``["classifier"]``.

    Example (the imports and ``model`` as in the example of :class:`~mona_peft.tuners.config_utils.WrappingConfig`):

        ```py
        >>> model = get_peft_model(model, mona_peft.AdaptFormerConfig(modules_to_save=["classifier"]))
        ```
    """

    allows_absent_adapters = False

    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "MLP modules to adapt; default: the MLP of every block."}
    )
    scale: float = field(default=0.1, metadata={"help": "Scale of the adapter's output."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout after the ReLU."})
    init_weights: AdaptFormerInit = field(
        default="lora", metadata={"help": "'lora' (zero up projection: starts as the base model) or 'bert'."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = ADAPTFORMER
        owner = "AdaptFormerConfig"
        self.scale = check_number(owner, "scale", self.scale)
        self.dropout = check_fraction(owner, "dropout", self.dropout)
        check_choice(owner, "init_weights", self.init_weights, ("lora", "bert"))
