"""Known-ground-truth localisation on the multi-label image world (several planted objects per image).

The hand-set colour detector's feature channel ``c`` is zero everywhere but on the ``c`` object
(colour-opponent 1 x 1 convolution, ReLU), and label ``c``'s logit reads channel ``c`` only, so
Grad-CAM of label ``c`` is exactly that channel: every map peaks on its object and holds all of its
mass there (energy 1). EigenCAM is class-agnostic: the same map for every label of an image.
"""

from __future__ import annotations

import numpy as np
import torch

from explainkit.adapters import MultiLabelTarget
from explainkit.cam import compute
from explainkit.cam.localisation import localisation_table
from explainkit.datasets.multilabel import LABELS, MultiLabelWorldSpec, colour_detector, generate_multilabel_world


def test_per_label_localisation_table_on_the_multilabel_world():
    images, labels, masks = generate_multilabel_world(MultiLabelWorldSpec(n=16))
    net = colour_detector()
    with torch.no_grad():
        probs = torch.sigmoid(net(torch.from_numpy(images)))
    assert np.array_equal((probs > 0.5).long().numpy(), labels)
    assert (labels.sum(axis=1) >= 2).any()  # several objects per image
    rows = []
    eigen_maps = {}
    for c, name in enumerate(LABELS):
        idx = np.nonzero(labels[:, c])[0]
        res = compute(net, torch.from_numpy(images[idx]), methods=["gradcam", "eigencam"], layer="1",
                      targets=MultiLabelTarget(c))
        eigen_maps[name] = dict(zip(idx.tolist(), res.maps["eigencam"]))
        rows += localisation_table(res.maps, {name: [masks[name][i] for i in idx]}, n_resamples=300)
    by = {(r["method"], r["label"]): r for r in rows}
    for name in LABELS:
        g = by[("gradcam", name)]
        assert g["hit_rate"]["value"] == 1.0 and g["energy"]["value"] == 1.0 and g["localises"]
        assert g["hit_rate"]["n"] == int(labels[:, LABELS.index(name)].sum())
        assert 0 < g["chance_energy"] < 0.1 and g["chance_hit_rate"] > g["chance_energy"]
    # class-agnostic: one map per image whatever the label, so it cannot point at two objects at once
    shared = [i for i in eigen_maps["red"] if i in eigen_maps["green"]]
    assert shared and all(torch.allclose(eigen_maps["red"][i], eigen_maps["green"][i]) for i in shared)
    assert min(by[("eigencam", n)]["hit_rate"]["value"] for n in LABELS) < 1.0
