"""Re-render a replication document's generated blocks (tables, provenance, plots) from its
committed per-prompt results (`make replicate` / `make replicate-real` run it after the compare
run; tests/unit/test_replication_doc.py fails if a doc and its data disagree).

    python experiments/replication_doc.py         # docs/replication.md (the sums setting)
    python experiments/replication_doc.py real    # docs/replication-real.md (SmolLM2, geo task)
"""

from __future__ import annotations

import sys
from pathlib import Path

from grao_pipe.compare.report import DOC_END, replace_block, write_doc
from grao_pipe.compare.run import read_results
from grao_pipe.tasks import geo

ROOT = Path(__file__).resolve().parents[1]
# setting -> (document, committed results, plot name prefix)
DOCS = {"sums": ("docs/replication.md", "docs/data/replication.parquet", ""),
        "real": ("docs/replication-real.md", "docs/data/replication-real.parquet", "real_")}
BREAKDOWN_BEGIN = "<!-- generated from {data}: answers by question kind: begin -->"


def breakdown_block(data: str) -> str:
    """The geo task's per-kind block of the real-model document."""
    rows, _, _ = read_results(ROOT / data)
    return "\n".join([BREAKDOWN_BEGIN.format(data=data), geo.breakdown(rows), DOC_END])


def render(setting: str) -> None:
    doc, data, prefix = DOCS[setting]
    write_doc(ROOT / doc, ROOT / data, data, prefix)
    if setting == "real":
        path = ROOT / doc
        path.write_text(replace_block(path.read_text(encoding="utf-8"), breakdown_block(data)), encoding="utf-8")
    print(f"rewrote the generated blocks of {doc} from {data}")


if __name__ == "__main__":
    render(sys.argv[1] if len(sys.argv) > 1 else "sums")
