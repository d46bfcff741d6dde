"""docs/replication.md's generated block is a function of the committed per-prompt results
(docs/data/replication.parquet): re-rendering it must give the doc back, byte for byte."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from test_compare_report import _rows, cmp_cfg

from grao_pipe.compare import report
from grao_pipe.compare.run import read_results, write_results

ROOT = Path(__file__).resolve().parents[2]
DATA = "docs/data/replication.parquet"


def rendered_matches(doc: Path, results: Path, data_name: str, prefix: str = "") -> bool:
    rows, cmp, meta = read_results(results)
    text = doc.read_text(encoding="utf-8")
    return report.replace_block(text, report.doc_block(data_name, rows, cmp, meta, prefix=prefix)) == text


def _doc_script():
    spec = importlib.util.spec_from_file_location("replication_doc", ROOT / "experiments" / "replication_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_doc_block_round_trip_and_a_changed_number_is_caught(tmp_path):
    cfg = cmp_cfg(families=[{"name": "main", "claims": [{"variant": "a"}]}])
    rows = _rows("a", [0.3 + 0.01 * s for s in range(8)]) + _rows("b", [0.1 * (s % 3) for s in range(8)])
    write_results(tmp_path / "r.parquet", rows, {"compare": cfg.model_dump(mode="json"), "seconds": 12.0,
                                                 "loadavg": {"before": ["1.0", "1.0", "1.0"], "after": ["2.0", "2.0", "2.0"]}})
    doc = tmp_path / "doc.md"
    doc.write_text(f"# prose\n\n{report.DOC_BEGIN.format(data='r.parquet')}\nold\n{report.DOC_END}\n\nmore prose\n")
    report.write_doc(doc, tmp_path / "r.parquet", "r.parquet")
    text = doc.read_text()
    assert text.startswith("# prose\n") and text.endswith("\nmore prose\n") and "load average 1.0 1.0 1.0 before" in text
    assert "| a − b | mean R |" in text and (tmp_path / "img" / "compare_mean_reward.png").is_file()
    assert rendered_matches(doc, tmp_path / "r.parquet", "r.parquet")
    assert "+0.335" in text
    doc.write_text(text.replace("+0.335", "+0.336", 1))  # a hand-edited number
    assert not rendered_matches(doc, tmp_path / "r.parquet", "r.parquet")


def test_replication_doc_is_rendered_from_the_committed_data():
    if not (ROOT / DATA).is_file():
        pytest.skip(f"{DATA} is not committed yet: `make replicate` writes it and re-renders the doc")
    assert rendered_matches(ROOT / "docs" / "replication.md", ROOT / DATA, DATA), (
        f"docs/replication.md's generated block differs from {DATA}; run python experiments/replication_doc.py")


def test_real_replication_doc_is_rendered_from_the_committed_data():
    script = _doc_script()
    doc, data, prefix = script.DOCS["real"]
    if not (ROOT / data).is_file():
        pytest.skip(f"{data} is not committed yet: `make replicate-real` writes it and re-renders the doc")
    assert rendered_matches(ROOT / doc, ROOT / data, data, prefix), (
        f"{doc}'s generated block differs from {data}; run python experiments/replication_doc.py real")
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert report.replace_block(text, script.breakdown_block(data)) == text, (
        f"{doc}'s answers-by-kind block differs from {data}; run python experiments/replication_doc.py real")
