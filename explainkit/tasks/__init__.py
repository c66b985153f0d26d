"""Task metrics beyond classification, with bootstrap CIs over images, and CAMs per class region / label.

Segmentation: IoU from per-image confusion matrices; multi-label: average precision and F1.

Modules
-------
segmentation
    Confusion matrices, IoU, mIoU, pixel accuracy, their bootstrap.
multilabel
    Average precision (scikit-learn's definition, weighted for the bootstrap), F1, mAP.
regions
    Example images explained per class region / positive label, scored against the truth.
analyzer
    The ``segmentation`` and ``multilabel`` analyzers.
"""

from explainkit.tasks.multilabel import MultiLabelScores, average_precision, f1_scores, multilabel_scores
from explainkit.tasks.segmentation import (
    SegmentationScores,
    class_counts,
    confusion_matrix,
    iou,
    pixel_accuracy,
    segmentation_scores,
)

__all__ = ["MultiLabelScores", "SegmentationScores", "average_precision", "class_counts", "confusion_matrix",
           "f1_scores", "iou", "multilabel_scores", "pixel_accuracy", "segmentation_scores"]
