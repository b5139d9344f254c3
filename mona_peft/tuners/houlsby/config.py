"""Configuration of Houlsby's bottleneck adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config_utils import BottleneckConfig, check_choice
from ..registry import add_peft_type

HOULSBY = add_peft_type("houlsby")

HoulsbyInit = Literal["houlsby", "identity"]


@dataclass
class HoulsbyConfig(BottleneckConfig):
    """Configuration for [`HoulsbyModel`]: a bottleneck adapter after the attention and after the MLP of every block.

    Houlsby et al., "Parameter-Efficient Transfer Learning for NLP" (2019), the "Adapter" baseline of the Mona, VPT
    and MiMi papers: ``h -> h + up(act(down(h)))`` on the output of the attention's output projection and on the
    output of the MLP's last Linear, before each residual add. ``2 * C * inner_dim + inner_dim + C`` parameters per
    adapter for width ``C``, two adapters per block.

    Args:
        target_modules: Linear layers whose output is adapted, as a regex or a list of name suffixes. Defaults to the
            attention output projection and the MLP's output projection of every block (names from
            ``mona_peft.tuners.architectures``).
        exclude_modules: modules not to adapt (same syntax as PEFT's).
        inner_dim: bottleneck width (64 in the papers' baseline).
        inner_dim_pattern: per-module widths overriding ``inner_dim``: ``{regex: width}``, matched against the end of
            the module name as LoRA's ``rank_pattern`` (MiMi saves its shrunken sizes here). A width of 0 means no
            adapter at that module (MiMi removed it).
        activation: non-linearity between the projections (a ``transformers.activations`` name; GELU in Houlsby's
            code).
        init_weights: ``"houlsby"`` (default) initialises both projections truncated-normal with std 1e-3 (cut at two
            std) and zero biases, as Houlsby's code, so the adapter starts near the identity; ``"identity"``
            additionally zeroes the up projection so the adapted model starts exactly as the base model.
        modules_to_save: modules trained and saved in full, e.g. ``["classifier"]``.

    Example (the imports and ``model`` as in the example of :class:`~mona_peft.tuners.config_utils.WrappingConfig`):

        ```py
        >>> model = get_peft_model(model, mona_peft.HoulsbyConfig(modules_to_save=["classifier"]))
        ```
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Linear layers to adapt; default: attention and MLP output projections of each block."},
    )
    activation: str = field(default="gelu", metadata={"help": "Activation between the projections."})
    init_weights: HoulsbyInit = field(
        default="houlsby", metadata={"help": "'houlsby' (trunc-normal std 1e-3) or 'identity' (zero up projection)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = HOULSBY
        owner = "HoulsbyConfig"
        check_choice(owner, "init_weights", self.init_weights, ("houlsby", "identity"))
        from transformers.activations import ACT2FN

        check_choice(owner, "activation", self.activation, sorted(ACT2FN))
