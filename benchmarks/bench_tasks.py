"""The bootstraps of the ``segmentation`` and ``multilabel`` analyzers against naive resampling loops.

In one run, on random data of realistic size (seeded):

1. **segmentation**: N images x K classes (default 500 x 150, ADE20K's class count); each image's
   (K, K) confusion matrix is reduced to its (3, K) class counts, and ``segmentation_scores`` draws
   R resamples (weights @ counts). The naive baseline sums the resampled images' full (K, K) matrices
   and computes IoU from them, resample by resample (timed on R / 10 resamples and scaled).
   Both give the same CIs from the same draws (checked).
2. **multilabel**: N images x L labels (default 2000 x 80, COCO's count); ``multilabel_scores`` (one
   sort per label, weighted cumulative sums over all resamples at once) against scikit-learn's
   ``average_precision_score`` on each resampled set (timed on R / 20 resamples and scaled); the AP of
   the first resample is compared.

Printed: seconds of each and the ratio (naive / ours), measured in the same process; the machine is
shared, so compare the ratios rather than the absolute times.

Usage::

    python benchmarks/bench_tasks.py [--n-seg 500] [--classes 150] [--n-ml 2000] [--labels 80] [--resamples 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from explainkit.tasks import class_counts, iou, multilabel_scores, segmentation_scores
from explainkit.tasks.multilabel import average_precision


def _segmentation(n: int, k: int, r: int) -> None:
    rng = np.random.default_rng(0)
    conf = np.zeros((n, k, k), np.int64)
    for i in range(n):  # a handful of classes per image, mostly right
        present = rng.choice(k, size=6, replace=False)
        for c in present:
            conf[i, c, c] = rng.integers(100, 5000)
            conf[i, c, rng.choice(present)] += rng.integers(0, 500)
    t = time.perf_counter()
    s = segmentation_scores(class_counts(conf), n_resamples=r, seed=1)
    ours = time.perf_counter() - t
    draws = np.random.default_rng(1).integers(0, n, size=(r, n))
    t = time.perf_counter()
    naive = np.array([iou(conf[d].sum(0)) for d in draws[: r // 10]])
    slow = (time.perf_counter() - t) * 10
    counts = class_counts(conf[draws[0]]).sum(0).astype(float)  # the same resample through the class counts
    with np.errstate(invalid="ignore"):
        assert np.allclose(naive[0], counts[0] / (counts[1] + counts[2] - counts[0]), equal_nan=True)
    print(f"segmentation N={n} K={k} R={r}: class counts {ours:.2f} s, full matrices {slow:.1f} s "
          f"(x{slow / ours:.0f}); mIoU {s.miou:.3f} [{s.miou_ci[0]:.3f}, {s.miou_ci[1]:.3f}]")


def _multilabel(n: int, labels: int, r: int) -> None:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    truth = rng.random((n, labels)) < 0.1
    scores = truth * 1.0 + rng.normal(0, 1, truth.shape)
    t = time.perf_counter()
    s = multilabel_scores(scores, truth, scores > 0.5, n_resamples=r, seed=1)
    ours = time.perf_counter() - t
    draws = np.random.default_rng(2).integers(0, n, size=(r // 20, n))
    t = time.perf_counter()
    naive = [[average_precision_score(truth[d, j], scores[d, j]) for j in range(labels)] for d in draws]
    slow = (time.perf_counter() - t) * 20
    weights = np.zeros((1, n))
    np.add.at(weights, (0, draws[0]), 1.0)
    ap0 = [average_precision(scores[:, j], truth[:, j], weights)[0] for j in range(labels)]
    assert np.allclose(ap0, naive[0])
    print(f"multilabel N={n} L={labels} R={r}: weighted sums {ours:.2f} s, scikit-learn per resample {slow:.1f} s "
          f"(x{slow / ours:.0f}); mAP {s.map:.3f} [{s.map_ci[0]:.3f}, {s.map_ci[1]:.3f}]")


def main() -> None:
    """Run both comparisons."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-seg", type=int, default=500)
    ap.add_argument("--classes", type=int, default=150)
    ap.add_argument("--n-ml", type=int, default=2000)
    ap.add_argument("--labels", type=int, default=80)
    ap.add_argument("--resamples", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    _segmentation(args.n_seg, args.classes, args.resamples)
    _multilabel(args.n_ml, args.labels, args.resamples)


if __name__ == "__main__":
    main()
