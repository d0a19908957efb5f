"""Trust checks: shortcut audits of data and models, and an out-of-distribution detector.

* :func:`audit_data` - how well acquisition metadata alone predicts the label (``pneumo audit data``);
* :func:`audit_model` - how much of a run's score survives matched subsets, a resolution-normalised twin,
  perturbations, and where its Grad-CAM energy sits (``pneumo audit model``);
* :class:`OODScorer`, :func:`fit_ood`, :func:`ood_rates` - the out-of-distribution check stored with a run
  (``pneumo audit ood-fit``).

The names load their module on first use (PEP 562): prediction imports :mod:`pneumo.trust.ood` to score inputs, and
that must not pull in the audits (PyTorch, matplotlib) where only ONNX Runtime is installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pneumo.utils.lazy import lazy_exports

if TYPE_CHECKING:
    from pneumo.trust.data_audit import audit_data
    from pneumo.trust.model_audit import audit_model
    from pneumo.trust.ood import OODScorer, fit_ood, fit_scorer, ood_rates

__all__ = ["OODScorer", "audit_data", "audit_model", "fit_ood", "fit_scorer", "ood_rates"]

_MODULE_OF = {
    # The modules are not named like their functions: importing a submodule binds its name on this package, and a
    # lazily loaded ``audit_model`` function would then be shadowed by the ``audit_model`` module.
    "audit_data": "data_audit",
    "audit_model": "model_audit",
    **dict.fromkeys(("OODScorer", "fit_ood", "fit_scorer", "ood_rates"), "ood"),
}

__getattr__, __dir__ = lazy_exports(__name__, _MODULE_OF)
