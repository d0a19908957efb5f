"""Trust checks: shortcut audits of data and models, and an out-of-distribution detector.

* :func:`audit_data` - how well acquisition metadata alone predicts the label (``pneumo audit data``);
* :func:`audit_model` - how much of a run's score survives matched subsets, a resolution-normalised twin,
  perturbations, and where its Grad-CAM energy sits (``pneumo audit model``);
* :class:`OODScorer`, :func:`fit_ood`, :func:`ood_rates` - the out-of-distribution check stored with a run
  (``pneumo audit ood-fit``).
"""

from pneumo.trust.audit_data import audit_data
from pneumo.trust.audit_model import audit_model
from pneumo.trust.ood import OODScorer, fit_ood, fit_scorer, ood_rates

__all__ = ["OODScorer", "audit_data", "audit_model", "fit_ood", "fit_scorer", "ood_rates"]
