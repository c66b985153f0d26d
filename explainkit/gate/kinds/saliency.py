"""What the saliency-based kinds (``attribution_mass``, ``randomisation``) share: method, layer, classes.

Maps come from the Grad-CAM engine (:func:`explainkit.cam`, :mod:`explainkit.cam`); the
gate adds no explanation method of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from explainkit.cam.methods import get_method
from explainkit.gate.kinds.base import CheckContext, CheckKind
from explainkit.gate.kinds.interventions import forward_logits
from explainkit.options import Option

__all__ = ["SALIENCY_OPTIONS", "SaliencyKind"]

#: Policy keys of the saliency-based kinds.
SALIENCY_OPTIONS: dict[str, Option] = {
    "method": Option("str", "gradcam", help="explanation method: any name explainkit.cam accepts (docs/analyzers.md), "
                                            "CAM or input-level"),
    "layer": Option("str", None, help="target layer of CAM methods (default: the model's last spatial layer)"),
}


class SaliencyKind(CheckKind):
    """Base of the kinds that read explanation maps: validates the method, needs gradients (and hooks)."""

    options: ClassVar[Mapping[str, Option]] = SALIENCY_OPTIONS

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> None:
        """The method must be one the CAM engine knows."""
        get_method(options["method"])

    def missing_capabilities(self, cc: CheckContext) -> list[str]:
        """Gradients, and module hooks for methods that read a layer."""
        need = {"gradients"} | ({"module_hooks"} if get_method(self.spec.options["method"]).uses_layers else set())
        return sorted(need - cc.run.handle.capabilities)

    def classes(self, cc: CheckContext, unit: torch.Tensor) -> torch.Tensor:
        """The class each map explains: the policy's ``target_class``, else the predicted class.

        Parameters
        ----------
        cc : CheckContext
            The check.
        unit : torch.Tensor
            (B, 3, H, W) images in [0, 1] on the run's device.

        Returns
        -------
        torch.Tensor
            (B,) int64 class indices on the CPU.
        """
        if self.spec.target_class is not None:
            return torch.full((unit.shape[0],), cc.target_index(), dtype=torch.int64)
        return forward_logits(cc, unit).argmax(1)

    def explained(self, cc: CheckContext) -> str:
        """Which class the maps explain, for reports."""
        return f"class {cc.target_name() or cc.target_index()}" if self.spec.target_class is not None \
            else "the predicted class"
