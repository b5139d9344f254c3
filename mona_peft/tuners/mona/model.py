"""``MonaModel``: the PEFT tuner that injects Mona into a transformers Swin/ViT-family backbone."""

from __future__ import annotations

from torch import nn

from ..tuner_utils import WrappingTuner
from .config import MonaConfig, mona_inner_dim
from .layer import SITES, MonaLayer, TokenGrid


class MonaModel(WrappingTuner):
    """Injects Mona into every transformer block of a supported backbone.

    Created by ``peft.get_peft_model(model, MonaConfig(...))`` after ``import mona_peft``. The
    backbone is found through ``mona_peft.tuners.architectures``; unsupported models raise an error naming
    the supported ones. Mona is not mergeable (``merge_and_unload`` raises); ``unload()`` returns the
    untouched base model.

    Example (the imports and ``base`` as in the example of :class:`~mona_peft.tuners.tuner_utils.WrappingTuner`):

        ```py
        >>> model = get_peft_model(base, mona_peft.MonaConfig(modules_to_save=["classifier"]))
        ```
    """

    prefix: str = "mona_"
    tuner_layer_cls = MonaLayer
    display_name = "Mona"
    merge_error = (
        "Mona adapters cannot be merged into the base model: Mona is a non-linear module on the residual stream."
    )

    def _pre_injection_hook(self, model: nn.Module, config: MonaConfig, adapter_name: str) -> None:
        super()._pre_injection_hook(model, config, adapter_name)
        if not hasattr(self, "token_grid"):
            self.token_grid = TokenGrid()
        if self.architecture.spec.grid_source == "spatial_shapes":
            self._hook_once(
                "token_grid",
                self.architecture.patch_projection,
                lambda embeddings: embeddings.register_forward_pre_hook(
                    self.token_grid.record_shapes, with_kwargs=True
                ),
            )
        elif self.architecture.patch_projection is not None:
            self._hook_once(
                "token_grid",
                self.architecture.patch_projection,
                lambda projection: projection.register_forward_hook(self.token_grid.record),
            )

    def _new_layer(
        self, target: nn.Module, adapter_name: str, peft_config: MonaConfig, current_key: str
    ) -> MonaLayer | None:
        if all(mona_inner_dim(peft_config, current_key, site) == 0 for site in SITES):
            return None  # MiMi removed both Monas of this block: leave it unwrapped
        return MonaLayer(target, adapter_name, peft_config, self.architecture, self.token_grid, module_name=current_key)
