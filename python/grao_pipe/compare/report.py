"""The compare report, rendered from ``results.parquet`` alone (so a committed results file
re-renders the same numbers): per-variant metrics with every seed's value and a hierarchical
bootstrap interval, then each declared family of claims with seed-level paired tests,
Holm-adjusted p-values and the minimum detectable effect beside every "not shown".

Files: ``report.md``, ``report.html`` (the same tables and the plots, self-contained),
``<metric>.png`` (per-seed points visible), ``summary.json`` (every number of the tables).
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from grao_pipe.compare import stats
from grao_pipe.config import CompareConfig

LABELS = {"mean_reward": "mean R", "ras_strict": "RAS strict", "ras_win_tie": "RAS win+tie", "nag_net": "NAG net"}
START = "starting policy"


def outcome(metric: str, reward: float | None, base_reward: float | None) -> float | None:
    """One prompt's outcome behind a metric: R, 1[R > 0], 1[R >= 0], sign(R − R_base)."""
    if reward is None or (metric == "nag_net" and base_reward is None):
        return None
    reward = float(reward)
    if metric == "mean_reward":
        return float(reward)
    if metric == "ras_strict":
        return float(reward > 0)
    if metric == "ras_win_tie":
        return float(reward >= 0)
    if metric == "nag_net":
        assert base_reward is not None
        return float(int(reward > base_reward) - int(reward < base_reward))
    raise ValueError(f"unknown metric {metric!r}; one of {', '.join(LABELS)}")


def arm(rows: list[dict[str, Any]], metric: str, base: bool = False) -> stats.Arm:
    """(seed, prompt id, outcome) of ``rows``; ``base``: the starting policy's answers."""
    if base:
        return stats.Arm.from_rows((r["seed"], r["prompt_id"], outcome(metric, r["base_reward"], None)) for r in rows)
    return stats.Arm.from_rows((r["seed"], r["prompt_id"], outcome(metric, r["reward"], r["base_reward"])) for r in rows)


def _metrics(cmp: CompareConfig) -> list[str]:
    claimed = [c.metric or cmp.metrics[0] for f in cmp.families for c in f.claims]
    return list(dict.fromkeys([*cmp.metrics, *claimed]))


def summarise(rows: list[dict[str, Any]], cmp: CompareConfig) -> dict[str, Any]:
    """Every number the report shows, from the test rows."""
    test = [r for r in rows if r["split"] == "test"]
    by_variant = {v.name: [r for r in test if r["variant"] == v.name] for v in cmp.variants}
    metrics = _metrics(cmp)
    variants = []
    for name, vrows in [(START, by_variant[cmp.baseline]), *by_variant.items()]:
        entry: dict[str, Any] = {"variant": name, "lr": None if name == START else vrows[0]["lr"], "metrics": {}}
        for m in metrics:
            if name == START and m == "nag_net":
                continue
            a = arm(vrows, m, base=name == START)
            iv = stats.hierarchical_bootstrap(a, cmp.bootstrap)
            entry["metrics"][m] = {**asdict(iv), "per_seed": dict(zip(a.seeds, a.seed_means().tolist(), strict=True))}
        variants.append(entry)
    families = []
    for fam in cmp.families:
        claims: list[dict[str, Any]] = []
        for claim in fam.claims:
            baseline, metric = claim.baseline or cmp.baseline, claim.metric or cmp.metrics[0]
            a, b = arm(by_variant[claim.variant], metric), arm(by_variant[baseline], metric)
            comp = stats.compare(a, b, claim.variant, baseline, cmp.bootstrap, cmp.permutations, cmp.alpha / len(fam.claims))
            claims.append({"variant": claim.variant, "baseline": baseline, "metric": metric, "diff": asdict(comp.diff),
                           "seed_diffs": dict(zip(a.seeds, comp.seed_diffs, strict=True)), "p": asdict(comp.p),
                           "mde": comp.mde})
        for c, adj in zip(claims, stats.holm([c["p"]["value"] for c in claims]), strict=True):
            c["p_holm"] = adj
            c["shown"] = adj <= cmp.alpha
        families.append({"name": fam.name, "claims": claims})
    selection = _selection(rows, cmp)
    return {"seeds": list(cmp.seeds), "validation_seeds": list(cmp.validation_seeds), "alpha": cmp.alpha,
            "n_prompts": len({r["prompt_id"] for r in test}), "variants": variants, "families": families,
            "selection": selection}


def _selection(rows: list[dict[str, Any]], cmp: CompareConfig) -> list[dict[str, Any]]:
    val = [r for r in rows if r["split"] == "validation"]
    out = []
    for v in cmp.variants:
        for lr in sorted({r["lr"] for r in val if r["variant"] == v.name}):
            a = arm([r for r in val if r["variant"] == v.name and r["lr"] == lr], cmp.selection_metric)
            out.append({"variant": v.name, "lr": lr, "metric": cmp.selection_metric, "value": stats.grand_mean(a),
                        "per_seed": dict(zip(a.seeds, a.seed_means().tolist(), strict=True))})
    return out


# ---- text ----

def _num(x: float, signed: bool = False) -> str:
    if math.isnan(x):
        return "—"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _p_text(p: dict[str, Any], value: float | None = None) -> str:
    return stats.PValue(**p).text(value)


def _holm_text(c: dict[str, Any], m: int) -> str:
    """The Holm-adjusted p; where Monte Carlo found no draw as extreme, its bound m/B."""
    p = stats.PValue(**c["p"])
    if not p.exact and p.value <= p.floor * (1 + 1e-9):
        return f"< {min(1.0, m / p.n_resamples):.1g}"
    return f"{c['p_holm']:.2g}"


def _verdict(c: dict[str, Any], alpha: float, m: int) -> str:
    if c["shown"]:
        return "shown"
    if math.isinf(c["mde"]):
        n = len(c["seed_diffs"])
        return (f"not shown (no difference can be shown: {n} seed{'s' if n != 1 else ''} cannot reach "
                f"α/{m} = {alpha / m:.2g})")
    return f"not shown (MDE {c['mde']:.3f})"


def tables(s: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, shared by the markdown and the HTML."""
    metrics = [m for m in LABELS if any(m in v["metrics"] for v in s["variants"])]
    seeds = s["seeds"]
    head = ["variant", "lr"] + [f"{LABELS[m]} [95% CI]" for m in metrics] + [f"{LABELS[m]} per seed" for m in metrics]
    body = []
    for v in s["variants"]:
        cells = [v["variant"], "—" if v["lr"] is None else f"{v['lr']:g}"]
        for m in metrics:
            e = v["metrics"].get(m)
            cells.append("—" if e is None else f"{_num(e['value'], m != 'ras_strict' and m != 'ras_win_tie')} "
                         f"[{_num(e['low'])}, {_num(e['high'])}]")
        for m in metrics:
            e = v["metrics"].get(m)
            cells.append("—" if e is None else " ".join(_num(e["per_seed"][k], True) for k in sorted(e["per_seed"], key=int)))
        body.append(cells)
    out = [(f"Held-out test prompts ({s['n_prompts']}), seeds {seeds}: mean over seeds of each seed's mean "
            "over prompts; 95% interval: hierarchical bootstrap (seeds, then prompts within seeds)", head, body)]
    for fam in s["families"]:
        n_claims = len(fam["claims"])
        rows = [[f"{c['variant']} − {c['baseline']}", LABELS[c["metric"]],
                 f"{_num(c['diff']['value'], True)} [{_num(c['diff']['low'], True)}, {_num(c['diff']['high'], True)}]",
                 " ".join(_num(c["seed_diffs"][k], True) for k in sorted(c["seed_diffs"], key=int)),
                 _p_text(c["p"]), _holm_text(c, n_claims),
                 _verdict(c, s["alpha"], n_claims)] for c in fam["claims"]]
        out.append((f"Family '{fam['name']}' ({n_claims} claims declared before the run; Holm within the family, "
                    f"α = {s['alpha']}): paired by prompt id within each seed; p: sign-flip test over seeds",
                    ["claim", "metric", "Δ [95% CI]", "Δ per seed", "p (seeds)", "p Holm", "verdict"], rows))
    if s["selection"]:
        out.append((f"Learning-rate choice on validation seeds {s['validation_seeds']} (validation prompts)",
                    ["variant", "lr", "metric", "value", "per seed"],
                    [[e["variant"], f"{e['lr']:g}", LABELS[e["metric"]], _num(e["value"], True),
                      " ".join(_num(e["per_seed"][k], True) for k in sorted(e["per_seed"], key=int))]
                     for e in s["selection"]]))
    return out


def markdown(s: dict[str, Any]) -> str:
    parts = []
    for title, head, body in tables(s):
        parts += [title + ":", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        parts += ["| " + " | ".join(row) + " |" for row in body]
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def _html(s: dict[str, Any], pngs: list[Path], meta: dict[str, Any]) -> str:
    out = ["<html><head><meta charset='utf-8'><title>grao-pipe compare</title>",
           "<style>td,th{border:1px solid #ccc;padding:2px 6px}table{border-collapse:collapse;margin:8px 0}</style>",
           "</head><body><h1>grao-pipe compare</h1>", f"<p>{html.escape(_run_line(meta))}</p>"]
    for title, head, body in tables(s):
        out.append(f"<h3>{html.escape(title)}</h3><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
        out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body]
        out.append("</table>")
    for png in pngs:
        out.append(f"<img alt='{png.stem}' src='data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}'/>")
    return "\n".join(out) + "</body></html>\n"


def _run_line(meta: dict[str, Any]) -> str:
    load = meta.get("loadavg") or {}
    where = f"; load average {' '.join(load['before'])} before, {' '.join(load['after'])} after" \
        if load.get("before") and load.get("after") else ""
    return f"Wall time {meta.get('seconds', float('nan')):.0f} s{where}."


def plot(s: dict[str, Any], metric: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = figure(s, metric)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def figure(s: dict[str, Any], metric: str) -> Any:
    """Every seed's value per variant (points), the mean and its 95% interval (bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [v for v in s["variants"] if metric in v["metrics"]]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 0.9 * len(entries)), 3.6))
    for i, v in enumerate(entries):
        e = v["metrics"][metric]
        seeds = sorted(e["per_seed"], key=int)
        xs = [i + 0.18 * ((j / max(len(seeds) - 1, 1)) - 0.5) for j in range(len(seeds))]
        ax.scatter(xs, [e["per_seed"][k] for k in seeds], s=14, color="C0" if v["variant"] != START else "grey",
                   zorder=3, label="one seed" if i == 0 else None)
        ax.errorbar([i + 0.3], [e["value"]], yerr=[[e["value"] - e["low"]], [e["high"] - e["value"]]], fmt="s",
                    color="C3", capsize=3, ms=4, label="mean, 95% CI" if i == 0 else None)
    ax.set_xticks(range(len(entries)), [v["variant"] for v in entries], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel=LABELS[metric], title=f"{LABELS[metric]} on held-out prompts")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write(out: Path, rows: list[dict[str, Any]], cmp: CompareConfig, meta: dict[str, Any]) -> dict[str, Any]:
    """Render every report file into ``out``; returns the summary."""
    from grao_pipe.extras import require

    require("grao-pipe compare's plots", "matplotlib")
    s = summarise(rows, cmp)
    pngs = []
    for m in _metrics(cmp):
        plot(s, m, out / f"{m}.png")
        pngs.append(out / f"{m}.png")
    md = f"{_run_line(meta)}\n\n{markdown(s)}"
    (out / "report.md").write_text(md, encoding="utf-8")
    (out / "report.html").write_text(_html(s, pngs, meta), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(s, indent=1, default=str), encoding="utf-8")
    return s


# ---- a document's generated block (docs/replication.md) ----

DOC_BEGIN = "<!-- generated by grao-pipe compare from {data}: begin -->"
DOC_END = "<!-- generated: end -->"


def doc_block(data: str, rows: list[dict[str, Any]], cmp: CompareConfig, meta: dict[str, Any],
              img: str = "img", prefix: str = "") -> str:
    """The generated block of a document: provenance, wall time and load, the tables, the plots
    (``img/<prefix>compare_<metric>.png``), all from the results file ``data`` (a path as the doc
    names it)."""
    commits = sorted({r["commit"] or "unknown" for r in rows})
    versions = sorted({r["versions"] for r in rows})
    s = summarise(rows, cmp)
    plots = [f"![{LABELS[m]} per seed]({img}/{prefix}compare_{m}.png)" for m in _metrics(cmp)]
    return "\n".join([DOC_BEGIN.format(data=data),
                      f"Data: `{data}` ({len(rows)} per-prompt rows), commit {', '.join(commits)}; packages {'; '.join(versions)}.",
                      f"{_run_line(meta)}", "", markdown(s), *plots, DOC_END])


def replace_block(text: str, block: str) -> str:
    """``text`` with its generated block replaced by ``block``."""
    begin = block.split("\n", 1)[0]
    if begin not in text or DOC_END not in text:
        raise ValueError(f"no generated block ({begin} ... {DOC_END}); add the two markers")
    head, rest = text.split(begin, 1)
    return head + block + rest.split(DOC_END, 1)[1]


def write_doc(doc: Path, results: Path, data_name: str, prefix: str = "") -> None:
    """Re-render ``doc``'s generated block and its plots (beside it, in img/, named with
    ``prefix`` so that two documents' plots do not collide) from ``results``."""
    from grao_pipe.compare.run import read_results

    rows, cmp, meta = read_results(results)
    img = doc.parent / "img"
    img.mkdir(exist_ok=True)
    s = summarise(rows, cmp)
    for m in _metrics(cmp):
        plot(s, m, img / f"{prefix}compare_{m}.png")
    block = doc_block(data_name, rows, cmp, meta, prefix=prefix)
    doc.write_text(replace_block(doc.read_text(encoding="utf-8"), block), encoding="utf-8")
