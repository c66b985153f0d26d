"""Sequential samples: the seeded order, running moments, CI half-widths and the stopping rule."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from scipy import stats

from explainkit.backends.progress import Progress, format_duration
from explainkit.stats.sequential import Moments, SampleLog, SampleSchedule, half_width, priority_order


def test_order_depends_on_ids_and_seed_only():
    ids = [f"class_{i % 3}/img_{i:04d}.png" for i in range(200)]
    order = priority_order(ids, seed=7, salt="metrics")
    assert sorted(order.tolist()) == list(range(200))
    shuffled = list(np.random.default_rng(0).permutation(ids))
    # the same images in the same order whatever the probe set's order ...
    assert [ids[i] for i in order] == [shuffled[i] for i in priority_order(shuffled, seed=7, salt="metrics")]
    # ... and adding images never reorders the ones already there
    more = ids + [f"extra/{i}.png" for i in range(50)]
    kept = [more[i] for i in priority_order(more, seed=7, salt="metrics") if i < 200]
    assert kept == [ids[i] for i in order]
    assert order.tolist() != priority_order(ids, seed=8, salt="metrics").tolist()
    assert order.tolist() != priority_order(ids, seed=7, salt="road").tolist()
    # a uniform order: the first half holds about half of every class
    first = [ids[i] for i in order[:100]]
    assert all(20 <= sum(s.startswith(f"class_{c}") for s in first) <= 47 for c in range(3))


def test_moments_merge_and_half_width_match_a_direct_computation():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(37, 3))
    parts = [Moments.of(values[a:b]) for a, b in ((0, 10), (10, 11), (11, 37))]
    merged = parts[2].merge(parts[0]).merge(Moments()).merge(parts[1])
    assert merged.n == 37
    np.testing.assert_allclose(merged.mean(), values.mean(0))
    lo, hi = stats.t.interval(0.95, 36, loc=values.mean(0), scale=stats.sem(values, axis=0))
    np.testing.assert_allclose(merged.half_width(), (hi - lo) / 2, rtol=1e-9)
    np.testing.assert_allclose(half_width(values[:, 1]), (hi[1] - lo[1]) / 2, rtol=1e-9)
    assert math.isinf(half_width(np.array([1.0, np.nan])))
    assert Moments.of(np.array([[1.0, np.nan], [2.0, 3.0]])).n == 1  # rows with a NaN are skipped


def test_moments_keep_a_tiny_spread_on_a_large_mean_in_any_merge_order():
    """Raw sums of squares cancel here (6e17 against a spread of 6e-5); the centred form does not."""
    rng = np.random.default_rng(2)
    values = 1e8 + rng.normal(scale=1e-3, size=(64, 1))
    direct = stats.sem(values, axis=0) * stats.t.ppf(0.975, 63)
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(64)
        cuts = np.sort(np.random.default_rng(seed + 10).choice(np.arange(1, 64), 4, replace=False))
        parts = [Moments.of(values[order][a:b]) for a, b in zip([0, *cuts], [*cuts, 64])]
        merged = parts[0]
        for p in parts[1:]:
            merged = merged.merge(p)
        np.testing.assert_allclose(merged.half_width(), direct, rtol=1e-4)  # inputs carry ~1e-8 of 1e-3


def test_schedule_stops_for_the_right_reason():
    s = SampleSchedule(minimum=16, maximum=64, target=0.1)
    assert s.first(1000) == 16 and s.first(10) == 10
    assert s.decide(16, [0.3, 0.05], 1000).size == 32
    assert s.decide(32, [0.09, 0.05], 1000).reason.startswith("precision reached")
    assert s.decide(64, [0.3], 1000).reason == "maximum sample size (64) reached"
    assert s.decide(40, [0.3], 40).reason == "every image used"
    assert s.decide(32, [0.3], 50).size == 50
    assert SampleSchedule(16, 64, None).decide(32, [0.0], 1000).size == 64  # no target: grow to the maximum
    # time budget: a whole stage, part of one, or none
    assert s.decide(16, [0.3], 1000, cost_per_image=1.0, allowance_s=100).size == 32
    part = s.decide(16, [0.3], 1000, cost_per_image=1.0, allowance_s=8.5)
    assert part.size == 24 and part.reason.startswith("time budget")
    none = s.decide(16, [0.3], 1000, cost_per_image=1.0, allowance_s=2)
    assert none.size is None and none.reason.startswith("time budget")


def test_log_records_stages_and_the_reason():
    s = SampleSchedule(minimum=4, maximum=16, target=0.1, quantity="q")
    log = SampleLog()
    assert s.advance(log, 4, [1.0], 100) == 8
    assert s.advance(log, 8, [0.05], 100) is None
    assert s.advance(log, 8, [1.0], 100) is None  # stopped stays stopped
    out = s.report(log, 8, [0.05], 100)
    assert out["stages"] == [4, 8] and out["n"] == 8 and out["stopped"].startswith("precision reached")
    assert out["half_width"] == 0.05 and out["target_half_width"] == 0.1 and out["quantity"] == "q"
    assert s.report(None, 3, [math.inf], 3)["stopped"] == "every image used"


class _Stream(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_progress_lines_when_not_a_terminal():
    clock = iter([0.0, 5.0, 31.0, 40.0, 62.0, 75.0, 80.0])
    out = _Stream()
    p = Progress("analyze", 100, interval=30.0, stream=out, clock=lambda: next(clock))
    for _ in range(5):
        p.update(10)
    p.close()
    lines = out.getvalue().splitlines()
    # one line at most every 30 s (at 31 s and 62 s), plus the last one
    assert len(lines) == 3
    assert lines[0] == "explainkit: analyze: 20/100 images (20%), 0.645 images/s, about 2m04s left"
    assert lines[-1].startswith("explainkit: analyze: 50/100 images (50%)") and lines[-1].endswith("done in 1m20s")
    quiet = _Stream()
    Progress("x", 10, enabled=False, stream=quiet).update(10)
    assert quiet.getvalue() == ""
    assert format_duration(3725) == "1h02m" and format_duration(59.4) == "59s"
    # a step without images (finalize): one line when it ends
    step, ticks = _Stream(), iter([0.0, 42.0])
    Progress("finalize gradcam", 0, stream=step, clock=lambda: next(ticks)).close()
    assert step.getvalue() == "explainkit: finalize gradcam: done in 42s\n"


def test_bad_budget_values_are_config_errors():
    from explainkit.config import parse_duration
    from explainkit.errors import ConfigError

    assert parse_duration("1h30m") == 5400 and parse_duration("90s") == 90 and parse_duration(45) == 45
    for bad in ("", "ten minutes", "0", "-5m", True):
        with pytest.raises(ConfigError):
            parse_duration(bad)


def test_cli_time_budget_and_progress_lines_in_a_log(capsys, small_world, demo_model_path, tmp_path):
    """Stderr that is not a terminal (capsys) gets plain progress lines; the budget is read and recorded."""
    from explainkit.cli.main import main

    code = main(["analyze", str(demo_model_path), "--data", str(small_world), "--out", str(tmp_path / "a"),
                 "--analyzer", "performance", "--time-budget", "10m", "--format", "json"])
    out = capsys.readouterr()
    assert code == 0
    doc = json.loads(out.out)
    assert doc["provenance"]["config"]["time_budget"] == {"value": "10m", "source": "command line"}
    assert doc["provenance"]["config"]["time_budget_s"] == 600
    lines = out.err.splitlines()
    assert lines[0].startswith("explainkit: analyze: 120/120 images (100%)") and lines[0].endswith("s")
    assert lines[1].startswith("explainkit: finalize performance: done in ")
    code = main(["analyze", str(demo_model_path), "--data", str(small_world), "--out", str(tmp_path / "b"),
                 "--analyzer", "performance", "--time-budget", "ten minutes"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "bad duration 'ten minutes'" in err
