"""INVERT at ImageNet scale: the naive per-candidate search vs explainkit, in one run.

Data (synthetic, ImageNet-like, seeded): N = 50,000 samples = 1,000 disjoint classes x 50 images;
C = 1,473 concepts = the 1,000 classes + 473 "hypernyms", each the OR of its descendant classes in
a random tree (every hypernym covers >= 2 classes, as in INVERT's WordNet recipe). A layer of 512
units: unit j responds to one random concept plus noise and is ReLU'd (about 40 % tied zeros).

Search: L = 3, B = 3, max_fraction 0.5, all 2C candidates (the reference defaults) and, by default,
min_fraction = 0.002 -- the reference demo's alpha on ImageNet-val: single classes (0.1 %) are too
small, so labels are hypernyms and compositions such as ``h & ~c`` (with min_fraction 0 the best
label of a noisy unit is usually one class and its trivial copies ``c & c``, ``c | c``).

* naive: the reference algorithm as written -- per candidate formula, build its mask and compute
  its AUROC from scratch with sklearn.metrics.roc_auc_score (a sort of N values), Python lists and
  stable sorts. Timed on --naive-units units; the 512-unit figure is an extrapolation (stated).
* explainkit: label_neurons(..., confirm_fraction=0, dedupe=False), i.e. the same semantics on all
  samples, timed per unit (a block of one unit) and for the whole layer in blocks; then the default
  pipeline (held-out split, DeLong CIs, Mann-Whitney, BH, dedupe) for the layer end to end.

Results on the compared units must be identical (same formulas in the same order, AUROCs within
1e-9). Peak memory: tracemalloc peak during the layer run and the process's ru_maxrss.

Run: ``python benchmarks/bench_invert.py`` (``--naive-units 0`` skips the slow part; ``--quick``
uses N = 5,000 for a smoke run).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc
from operator import itemgetter

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from explainkit.invert import ConceptMatrix, label_neurons


def imagenet_like(n_classes: int, per_class: int, n_hypernyms: int, seed: int = 0):
    """Boolean (N, C) sparse concept table: disjoint classes, then hypernyms = ORs of classes."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    roots = [[k] for k in range(n_classes)]
    hypernyms = []
    while len(hypernyms) < n_hypernyms:
        k = min(int(rng.integers(2, 5)), len(roots))
        pick = sorted(rng.choice(len(roots), size=k, replace=False), reverse=True)
        merged = sorted(c for i in pick for c in roots.pop(i))
        hypernyms.append(merged)
        roots.append(merged)
    rows, cols = [np.arange(labels.size)], [labels]
    members = np.zeros((n_hypernyms, n_classes), dtype=bool)
    for h, classes in enumerate(hypernyms):
        members[h, classes] = True
    for h in range(n_hypernyms):
        idx = np.flatnonzero(members[h][labels])
        rows.append(idx)
        cols.append(np.full(idx.size, n_classes + h))
    r, c = np.concatenate(rows), np.concatenate(cols)
    table = sp.csc_matrix((np.ones(r.size), (r, c)), shape=(labels.size, n_classes + n_hypernyms))
    names = [f"c{k}" for k in range(n_classes)] + [f"h{h}" for h in range(n_hypernyms)]
    return table, names


def layer_activations(table: sp.csc_matrix, n_units: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(N, n_units) ReLU'd activations and the concept each unit responds to."""
    rng = np.random.default_rng(seed)
    n, c = table.shape
    concept = rng.integers(0, c, size=n_units)
    signal = table[:, concept].toarray()
    a = 1.5 * signal + rng.normal(size=(n, n_units)) - 0.5
    return np.maximum(a, 0.0).astype(np.float32), concept


def naive_invert(a, y, length=3, beam=3, min_fraction=0.002, max_fraction=0.5):
    """The reference algorithm, one AUROC from scratch per candidate (sklearn)."""
    n, c = y.shape

    def valid(f):
        return min_fraction <= f <= max_fraction and 0 < f < 1

    def auc(mask):
        return roc_auc_score(mask, a) if 0 < mask.sum() < n else 0.0

    atoms = []
    for j in range(c):
        m = y[:, j]
        atoms.append({"formula": ((None, j, False),), "metric": auc(m), "concept_fraction": m.sum() / n})
    atoms += [{"formula": ((None, x["formula"][0][1], True),), "metric": 1 - x["metric"],
               "concept_fraction": 1 - x["concept_fraction"]} for x in list(atoms)]
    atoms = sorted(atoms, key=itemgetter("metric"), reverse=True)
    current = [x for x in atoms if valid(x["concept_fraction"])][:beam]
    cands = sorted(atoms, key=lambda x: 2 * abs(x["metric"] - 0.5), reverse=True)

    def evaluate(formula):
        m = None
        for op, j, neg in formula:
            lit = ~y[:, j] if neg else y[:, j]
            m = lit if op is None else (m & lit if op == "and" else m | lit)
        return m

    for _ in range(2, length + 1):
        for phi in list(current):
            base = evaluate(phi["formula"])
            for lit in cands:
                (_, j, neg), = lit["formula"]
                col = ~y[:, j] if neg else y[:, j]
                for op, m in (("and", base & col), ("or", base | col)):
                    f = m.sum() / n
                    if valid(f):
                        current.append({"formula": (*phi["formula"], (op, j, neg)), "metric": auc(m),
                                        "concept_fraction": f})
        current = sorted(current, key=itemgetter("metric"), reverse=True)[:beam]
    return current


def _terms_key(expl, index):
    return tuple((t[0], index[t[1]], t[2]) for t in expl.terms)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--naive-units", type=int, default=1, help="units run with the naive search (slow)")
    ap.add_argument("--units", type=int, default=512)
    ap.add_argument("--quick", action="store_true", help="N = 5,000 (100 classes x 50, 47 hypernyms)")
    ap.add_argument("--min-fraction", type=float, default=0.002, help="INVERT's alpha (reference demo: 0.002)")
    args = ap.parse_args()
    n_classes, n_hyper = (100, 47) if args.quick else (1000, 473)
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, cpus={os.cpu_count()}")
    table, names = imagenet_like(n_classes, 50, n_hyper)
    acts, concept = layer_activations(table, args.units)
    n, c = table.shape
    print(f"data: N={n:,} samples, C={c:,} concepts (nnz {table.nnz:,}), {args.units} units, "
          f"{np.mean(acts == 0):.0%} tied zeros; search L=3, B=3, fraction [{args.min_fraction}, 0.5], "
          f"all {2 * c:,} candidates")
    cm = ConceptMatrix(table, names)
    ref_kw = dict(length=3, beam=3, min_fraction=args.min_fraction, max_fraction=0.5, confirm_fraction=0.0,
                  dedupe=False)

    label_neurons(acts[:, :1], cm, **ref_kw)  # warm-up (imports, caches)
    # Compare on units driven by a hypernym covering at most half the data: their best formulas are
    # compositions (hypernym minus its weakest classes), not a single class.
    fraction = np.asarray(table.sum(axis=0)).ravel()[concept] / n
    hyper = np.flatnonzero((concept >= n_classes) & (fraction <= 0.5))
    units = [int(u) for u in hyper[: max(args.naive_units, 4)]]
    t = time.perf_counter()
    fast_units = [label_neurons(acts[:, [u]], cm, **ref_kw)[0] for u in units]
    per_unit_fast = (time.perf_counter() - t) / len(units)
    print(f"explainkit, one unit at a time: {per_unit_fast:.3f} s/unit (mean of {len(units)})")

    tracemalloc.start()
    t = time.perf_counter()
    layer = label_neurons(acts, cm, **ref_kw)
    t_layer = time.perf_counter() - t
    _, peak_layer = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"explainkit, {args.units}-unit layer (reference semantics, blocks of 64): {t_layer:.1f} s "
          f"({t_layer / args.units * 1e3:.0f} ms/unit); tracemalloc peak {peak_layer / 2**20:.0f} MiB")

    tracemalloc.start()
    t = time.perf_counter()
    full = label_neurons(acts, cm, min_fraction=args.min_fraction, seed=0)
    t_full = time.perf_counter() - t
    _, peak_full = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    n_acc = sum(bool(r.accepted) for r in full)
    print(f"explainkit, {args.units}-unit layer, default pipeline (60/40 split, dedupe, DeLong, Mann-Whitney, BH): "
          f"{t_full:.1f} s; {n_acc} accepted; tracemalloc peak {peak_full / 2**20:.0f} MiB")

    index = {name: j for j, name in enumerate(names)}
    same = all(len(one.explanations) == len(layer[u].explanations)
               and all(_terms_key(a, index) == _terms_key(b, index) and a.auroc == b.auroc
                       for a, b in zip(one.explanations, layer[u].explanations))
               for u, one in zip(units, fast_units))
    print(f"per-unit and whole-layer runs agree on units {units}: {same}")

    if args.naive_units > 0:
        y = cm.csc.toarray().astype(bool)
        t = time.perf_counter()
        identical = True
        for u in units[: args.naive_units]:
            ref = naive_invert(acts[:, u], y, min_fraction=args.min_fraction)
            got = layer[u].explanations
            match = (len(ref) == len(got) and all(
                r["formula"] == _terms_key(g, index) and abs(r["metric"] - g.auroc) <= 1e-9
                for r, g in zip(ref, got)))
            identical &= match
            print(f"  unit {u}: naive {[(r['formula'], round(r['metric'], 6)) for r in ref]}")
            print(f"  unit {u}: explainkit {[(e.formula, round(e.auroc, 6)) for e in got]}  identical={match}")
        per_unit_naive = (time.perf_counter() - t) / args.naive_units
        print(f"naive (sklearn AUROC per candidate): {per_unit_naive:.1f} s/unit, measured on {args.naive_units} "
              f"unit(s); {args.units} units extrapolated: {per_unit_naive * args.units / 3600:.1f} h")
        print(f"RATIO per unit naive / explainkit (one unit at a time): {per_unit_naive / per_unit_fast:,.0f}x")
        print(f"RATIO {args.units}-unit layer naive (extrapolated) / explainkit (measured): "
              f"{per_unit_naive * args.units / t_layer:,.0f}x")
        print(f"identical results on the compared units: {identical}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"process peak RSS (ru_maxrss, whole benchmark incl. data): {rss:.2f} GiB")
    print(f"target: {args.units}-unit layer <= 60 s on 2 cores: {'met' if t_layer <= 60 else 'MISSED'} "
          f"({t_layer:.1f} s); peak memory <= 4 GiB: {'met' if rss <= 4 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
