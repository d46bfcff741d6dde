"""Re-render docs/replication.md's generated block (tables, provenance, plots) from the committed
per-prompt results, docs/data/replication.parquet (`make replicate` runs it after the compare
run; tests/unit/test_replication_doc.py fails if the doc and the data disagree)."""

from __future__ import annotations

from pathlib import Path

from grao_pipe.compare.report import write_doc

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "replication.md"
DATA = "docs/data/replication.parquet"

if __name__ == "__main__":
    write_doc(DOC, ROOT / DATA, DATA)
    print(f"rewrote the generated block of {DOC.relative_to(ROOT)} from {DATA}")
