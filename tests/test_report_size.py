"""The HTML report stays small for models with many classes: the confusion table shows the classes that occur."""

from __future__ import annotations

import numpy as np

from explainkit.report.html import confusion_view


def _confusion(k: int, labelled: int, seed: int = 0) -> dict:
    """A K-class confusion record: ``labelled`` classes have images, predictions fall anywhere."""
    rng = np.random.default_rng(seed)
    matrix = np.zeros((k, k), dtype=np.int64)
    for _ in range(300):
        matrix[rng.integers(labelled), rng.integers(k)] += 1
    return {"classes": [f"class_{i}" for i in range(k)], "matrix": matrix.tolist()}


def test_few_classes_are_shown_whole_without_empty_ones():
    rec = _confusion(6, 3)
    m = np.asarray(rec["matrix"])
    m[:, 4] = 0  # a class nobody has or predicts
    rec["matrix"] = m.tolist()
    view = confusion_view(rec)
    used = [j for j in range(6) if m[j].sum() or m[:, j].sum()]
    assert view["columns"] == [f"class_{j}" for j in used] and not view["other"] and view["hidden"] == 0
    assert [r[0] for r in view["rows"]] == view["columns"]
    for name, counts, rest, total in view["rows"]:
        i = int(name.split("_")[1])
        assert counts == m[i, used].tolist() and rest == 0 and total == m[i].sum()


def test_many_classes_keep_the_labelled_ones_and_sum_the_rest():
    rec = _confusion(1000, 3)
    m = np.asarray(rec["matrix"])
    view = confusion_view(rec, max_classes=30)
    assert view["columns"] == ["class_0", "class_1", "class_2"] and view["other"]
    predicted_elsewhere = int((m[:, 3:].sum(0) > 0).sum())
    assert view["hidden"] == predicted_elsewhere > 30
    for i, (_, counts, rest, total) in enumerate(view["rows"]):
        assert counts == m[i, :3].tolist() and rest == m[i, 3:].sum() and total == m[i].sum()
