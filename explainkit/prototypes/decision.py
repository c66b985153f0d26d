"""Decision relevance: how much perturbing a characteristic changes the model's decision.

For an image ``x`` with target class ``t`` (its label, or the class predicted on the original)
and a characteristic ``c``::

    dlogp_c(x)  = log softmax(z(x))_t - log softmax(z(perturb_c(x)))_t     (nats)
    dlogit_c(x) = z_t(x) - z_t(perturb_c(x))                                (logit units)

Positive: the perturbation lowers the evidence for the target class, i.e. the decision relies on
the characteristic. The log-probability is the primary measure: it is invariant to shifts shared
by all logits (a contrast change that shrinks every feature moves all logits together) and is in
the same unit (nats) for every model, so it can be compared with randomly initialised copies
(:mod:`explainkit.prototypes.calibration`). The target logit is reported next to it.

Contribution of a prototype to the decision (used to weight prototypes by decision relevance):

* channel prototypes: gradient × activation of the target logit at the latent layer, summed over
  locations (the channel's first-order additive share of the logit; exact for a global-average-
  pooled channel feeding a linear classifier);
* prototype vectors with a linear class head (ProtoPNet's last layer): ``W[t, p] * s_p(x)``, the
  head weight times the prototype's (max-pooled) similarity — the exact additive share;
* otherwise (exemplar and k-means prototypes of ordinary models) none: prototypes are weighted
  equally.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DecisionRows", "DecisionScores", "class_means", "decision_scores", "resolve_targets"]


@dataclass
class DecisionScores:
    """Decision changes of one batch.

    Attributes
    ----------
    target : ndarray
        (B,) int64 target class of each image.
    log_prob : ndarray
        (B,) log-probability of the target on the original image (nats).
    delta_log_prob : ndarray
        (B, C) original minus perturbed log-probability of the target, per perturbation.
    delta_logit : ndarray
        (B, C) original minus perturbed target logit.
    """

    target: np.ndarray
    log_prob: np.ndarray
    delta_log_prob: np.ndarray
    delta_logit: np.ndarray

    def subset(self, mask: np.ndarray) -> DecisionScores:
        """The scores of the images selected by the (B,) boolean ``mask``."""
        return DecisionScores(self.target[mask], self.log_prob[mask], self.delta_log_prob[mask],
                              self.delta_logit[mask])


def resolve_targets(logits: torch.Tensor, labels: torch.Tensor | np.ndarray | None) -> torch.Tensor:
    """Target class per image: the label where it is a valid class index, else the predicted class.

    Parameters
    ----------
    logits : torch.Tensor
        (B, K) logits of the original images.
    labels : tensor or ndarray, optional
        (B,) class indices in the model's output order (-1 or out of range: unknown).

    Returns
    -------
    torch.Tensor
        (B,) int64 targets on the logits' device.
    """
    predicted = logits.argmax(1)
    if labels is None:
        return predicted
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=logits.device)
    return torch.where((lab >= 0) & (lab < logits.shape[1]), lab, predicted)


def decision_scores(logits: torch.Tensor, targets: torch.Tensor, n_images: int) -> DecisionScores:
    """Decision changes from the logits of the originals followed by the perturbed copies.

    Parameters
    ----------
    logits : torch.Tensor
        (B (1 + C), K) logits: the B originals, then B images per perturbation.
    targets : torch.Tensor
        (B,) target classes.
    n_images : int
        B.

    Returns
    -------
    DecisionScores
        (B, C) changes of the target's log-probability and logit.
    """
    b = n_images
    c = logits.shape[0] // b - 1
    t = targets.to(logits.device).long()
    views = logits.double().reshape(1 + c, b, -1)  # (1 + C, B, K)
    idx = t[None, :, None].expand(1 + c, b, 1)
    logit_t = views.gather(2, idx)[..., 0]  # (1 + C, B)
    logp_t = views.log_softmax(dim=2).gather(2, idx)[..., 0]
    return DecisionScores(
        t.cpu().numpy().astype(np.int64), logp_t[0].cpu().numpy(),
        (logp_t[:1] - logp_t[1:]).T.cpu().numpy(), (logit_t[:1] - logit_t[1:]).T.cpu().numpy(),
    )


@dataclass
class DecisionRows:
    """Per-image decision changes of the model and of its re-initialised copies (mergeable: a union).

    Attributes
    ----------
    index : ndarray
        (n,) probe-set indices.
    target : ndarray
        (n,) target classes.
    delta_log_prob, delta_logit : ndarray
        (n, C') the model's changes per view (characteristics, then control views).
    null_delta_log_prob : ndarray
        (n, K, C') the copies' log-probability changes.
    """

    index: np.ndarray
    target: np.ndarray
    delta_log_prob: np.ndarray
    delta_logit: np.ndarray
    null_delta_log_prob: np.ndarray

    @classmethod
    def empty(cls, n_views: int, n_null: int) -> DecisionRows:
        """No rows."""
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, n_views)), np.zeros((0, n_views)),
                   np.zeros((0, n_null, n_views)))

    def merge(self, other: DecisionRows) -> DecisionRows:
        """Union of two disjoint sets of rows, kept in index order (independent of partitioning)."""
        index = np.concatenate([self.index, other.index])
        order = np.argsort(index, kind="stable")

        def cat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.concatenate([a, b])[order]

        return DecisionRows(index[order], cat(self.target, other.target),
                            cat(self.delta_log_prob, other.delta_log_prob), cat(self.delta_logit, other.delta_logit),
                            cat(self.null_delta_log_prob, other.null_delta_log_prob))


def class_means(values: np.ndarray, target: np.ndarray) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Per target class: mean and sampling covariance of the mean of per-image values.

    Parameters
    ----------
    values : ndarray
        (n, C) per-image values.
    target : ndarray
        (n,) target class per image.

    Returns
    -------
    classes : list of int
        The target classes present, sorted.
    means : ndarray
        (G, C) class means.
    covariances : ndarray
        (G, C, C) covariance of each class mean (sample covariance / n_k; 0 for a single image).
    counts : ndarray
        (G,) images per class.
    """
    classes = sorted({int(t) for t in target})
    c = values.shape[1]
    means, covs, counts = np.zeros((len(classes), c)), np.zeros((len(classes), c, c)), np.zeros(len(classes), int)
    for g, k in enumerate(classes):
        v = values[target == k]
        means[g], counts[g] = v.mean(0), len(v)
        if len(v) > 1:
            covs[g] = np.cov(v, rowvar=False).reshape(c, c) / len(v)
    return classes, means, covs, counts
