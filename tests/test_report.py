"""The JSON report (schema, provenance, strict JSON) and its HTML rendering (offline, escaped, budgeted)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import ClassVar

import jsonschema
import pytest

import explainkit
from explainkit.analyzers.base import Analyzer, RecordState, Section
from explainkit.errors import ConfigError
from explainkit.options import Option
from explainkit.report import Report, schema_path
from explainkit.report.assets import AssetStore
from explainkit.report.images import thumbnail, to_data_uri

SCHEMA = json.loads(open(schema_path()).read())


@pytest.fixture(scope="module")
def report(small_world, demo_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    handle = explainkit.load_model(demo_model_path)
    return explainkit.analyze(handle, small_world, ["performance"], out=out, seed=7, config={"k": "v"}), out


def test_schema_and_provenance(report):
    rep, out = report
    doc = json.loads((out / "report.json").read_text())
    jsonschema.validate(doc, SCHEMA)
    prov = doc["provenance"]
    assert prov["seed"] == 7 and prov["versions"]["torch"]
    assert prov["config"] == {"k": "v", "backend": {"name": "serial", "workers": 1}, "cache": None,
                              "autocast": None, "time_budget_s": None}
    assert prov["model"]["sha256"] == explainkit.loading.file_sha256(prov["model"]["source"])
    assert prov["model"]["preprocessing"]["sources"]["input_size"] == "safetensors metadata"
    assert prov["data"]["manifest_sha256"] == explainkit.ProbeSet.from_folder(prov["data"]["root"]).manifest_hash()
    assert set(prov["timings_s"]) >= {"total", "forward", "performance"}
    assert Report.load(out / "report.json").to_dict() == rep.to_dict()


def test_same_seed_same_numbers(report, small_world, demo_model_path):
    rep, _ = report
    again = explainkit.analyze(explainkit.load_model(demo_model_path), small_world, ["performance"], seed=7)
    assert again.section("performance") == rep.section("performance")


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("src", "href", "action", "srcset", "poster", "data") and v:
                self.urls.append(v)
            if tag == "img" and k == "src":
                self.images.append(v)


def test_html_is_offline_and_self_contained(report):
    _, out = report
    html = (out / "report.html").read_text()
    parser = _Collector()
    parser.feed(html)
    for url in parser.urls:
        assert url.startswith(("#", "data:")), url
    assert not re.search(r"""(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}""", html.replace("http-equiv", ""), re.I)
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert '<script type="application/json" id="ek-data">' in html


def test_repr_html_and_rerender(report, tmp_path):
    rep, out = report
    body = rep._repr_html_()
    assert body.startswith("<style>") and 'class="ek-report"' in body
    from explainkit.cli.main import main

    assert main(["report", str(out / "report.json"), "--html", str(tmp_path / "again.html")]) == 0
    assert (tmp_path / "again.html").read_text().count("ek-section") == (out / "report.html").read_text().count(
        "ek-section")


def test_load_rejects_foreign_json(tmp_path):
    (tmp_path / "x.json").write_text('{"schema_version": "9.0"}')
    with pytest.raises(ConfigError, match="not an explainkit report"):
        Report.load(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Report.load(tmp_path / "y.json")


class _Pictures(Analyzer):
    """Emits many images (tests the size budget); not registered."""

    name = "pictures"
    title = "Pictures"
    summary = "test analyzer"
    options: ClassVar[dict[str, Option]] = {"n": Option("int", low=1, help="images to emit")}

    def __init__(self, n: int = 50) -> None:
        self.n = n

    def map(self, ctx, batch):
        return RecordState.from_batch(batch.indices, img=batch.images)

    def finalize(self, ctx, state) -> Section:
        imgs = state.column("img")
        assets = {f"im{i}": to_data_uri(thumbnail(imgs[i % len(imgs)], 64 + i)) for i in range(self.n)}
        return self.section(summary={"n": self.n}, data={"value": float("nan"), "ids": list(assets)}, assets=assets)


def test_asset_budget_and_nan(small_world, demo_model_path):
    rep = explainkit.analyze(explainkit.load_model(demo_model_path), small_world, [_Pictures(40)],
                             asset_budget_bytes=60_000)
    budget = rep["asset_budget"]
    assert budget["used_bytes"] <= 60_000 and budget["dropped"] and budget["count"] + len(budget["dropped"]) == 40
    assert rep.section("pictures")["data"]["value"] is None  # NaN became null
    json.loads(rep.to_json())
    assert rep.to_html().count("<img") == 0  # the generic template embeds no images
    store = AssetStore(budget_bytes=10)
    assert not store.add("a", "x" * 11) and store.dropped == ["a"]
    assert store.add("b", "y" * 10) and store.used_bytes == 10
    with pytest.raises(ValueError, match="duplicate"):
        store.add("b", "")


def test_atomic_save_leaves_old_file_on_failure(report, tmp_path, monkeypatch):
    rep, _ = report
    rep.save(tmp_path)
    before = (tmp_path / "report.json").read_text()

    def boom(self):
        raise RuntimeError("render failed")

    monkeypatch.setattr(Report, "to_html", boom)
    with pytest.raises(RuntimeError):
        rep.save(tmp_path)
    assert (tmp_path / "report.json").read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_report_that_fails_while_streaming_leaves_the_old_file(report, tmp_path):
    """report.json is streamed to a temporary file: a value JSON refuses half-way leaves the old file whole."""
    rep, _ = report
    rep.save(tmp_path)
    before = (tmp_path / "report.json").read_text()
    broken = Report(rep.to_dict())
    broken.data["sections"].append({"analyzer": "x", "data": {"v": object()}})  # after the sections written first
    with pytest.raises(TypeError, match="not JSON serializable"):
        broken.save(tmp_path, html=False)
    assert (tmp_path / "report.json").read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_embedded_json_copy_is_bounded():
    """The HTML page embeds the report's JSON whole when small, else without the sections' data."""
    from explainkit.report.html import embedded_data

    small = {"provenance": {"seed": 1}, "assets": {"a": "data:..."}, "findings": [],
             "sections": [{"analyzer": "x", "summary": {"n": 1}, "data": {"per_image": list(range(10))}}]}
    assert embedded_data(small) == {k: v for k, v in small.items() if k != "assets"}
    big = {**small, "sections": [{**small["sections"][0], "data": {"per_image": list(range(100_000))}}]}
    got = embedded_data(big, limit=100_000)
    assert got["sections"] == [{"analyzer": "x", "summary": {"n": 1}}] and "report.json" in got["data_omitted"]
    assert "assets" not in got and got["provenance"] == {"seed": 1}
