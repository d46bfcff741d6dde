"""Small-scale replication of the paper's comparison on the bundled task (CPU, `make replicate`).

Every method starts from the same base model and the same round-1 rollouts (the cache shares
them: same generate config, same prompts, same model), trains with the same budget per round
(pipelines/demo.yaml), and samples its own rollouts in later rounds. Per method and seed:
mean reward of each round's samples, then RAS and NAG of the final model against the base.

    python experiments/replicate.py [--seeds 3] [--rounds 3] [--out runs/replicate]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import time
from pathlib import Path

from grao_pipe.config import load_config
from grao_pipe.manifests import EvalManifest, ScoreManifest
from grao_pipe.pipeline import Pipeline
from grao_pipe.stages.train import read_metrics

METHODS: dict[str, list[str]] = {
    "grao": [],
    "sft": ["train.objective=sft"],
    "dpo": ["train.objective=dpo", "score.reference_logprobs=true"],
    "grpo": ["train.objective=grpo", "score.advantage.mode=samples_only"],
    "grao w/o imitation": ["train.beta=0"],
    "grao w/o exploration": ["train.exploration=false"],
    "grao w/o regulariser": ["train.lam=0"],
    "grao samples_only": ["score.advantage.mode=samples_only"],
}
TERMS = ("loss_exploration", "loss_imitation", "loss_alignment")


def one(method: str, seed: int, rounds: int, workdir: Path) -> dict:
    overrides = [f"workdir={workdir}", f"run.rounds={rounds}", f"train.seed={seed}", *METHODS[method]]
    cfg = load_config("pipelines/demo.yaml", overrides)
    p = Pipeline(cfg)
    outcomes = p.run()
    rewards = [o.manifest.stats.mean_reward for o in outcomes if isinstance(o.manifest, ScoreManifest)]
    steps = [m for o in outcomes if o.target.stage == "train" for m in read_metrics(o.target.dir.path)]
    evm = p.run_stage("eval", rounds).manifest
    assert isinstance(evm, EvalManifest)
    ev = evm.stats
    return {"method": method, "seed": seed, "round_rewards": rewards,
            "final_reward": ev.mean_reward["model"],
            "ras": ev.ras["strict"].value, "ras_win_tie": ev.ras["win_tie"].value,
            "nag": ev.nag["printed"].value, "nag_net": ev.nag["net"].value,
            "terms": [{k: m.get(k) for k in TERMS} for m in steps] if method.startswith("grao") else []}


def _png(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def report(results: list[dict], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in results))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in methods:
        runs = [r["round_rewards"] for r in results if r["method"] == m]
        xs = range(1, len(runs[0]) + 1)
        mean = [statistics.fmean(v) for v in zip(*runs, strict=True)]
        lo = [min(v) for v in zip(*runs, strict=True)]
        hi = [max(v) for v in zip(*runs, strict=True)]
        ax.plot(xs, mean, marker="o", label=m)
        ax.fill_between(xs, lo, hi, alpha=0.15)
    ax.set(xlabel="round (rollouts sampled from the latest model)", ylabel="mean reward R(o, y)",
           title="Reward of each round's samples (mean, min-max over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "reward_by_round.png", dpi=110)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    grao = [r for r in results if r["method"] == "grao"]
    if grao and grao[0]["terms"]:
        n = min(len(r["terms"]) for r in grao)
        for k in TERMS:
            share = []
            for i in range(n):
                vals = [abs(r["terms"][i][k] or 0) / max(sum(abs(r["terms"][i][t] or 0) for t in TERMS), 1e-12) for r in grao]
                share.append(statistics.fmean(vals))
            ax.plot(range(n), share, label=k.replace("loss_", ""))
        ax.set(xlabel="optimizer step (all rounds)", ylabel="share of |loss| (mean over seeds)",
               title="GRAO loss terms' shares over training")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "grao_term_shares.png", dpi=110)

    def stat(m: str, key: str) -> str:
        v = [r[key] for r in results if r["method"] == m]
        return f"{statistics.fmean(v):+.3f} ± {statistics.pstdev(v):.3f}"

    lines = ["| method | final reward | RAS strict | RAS win+tie | NAG | NAG net |", "|---|---|---|---|---|---|"]
    lines += [f"| {m} | {stat(m, 'final_reward')} | {stat(m, 'ras')} | {stat(m, 'ras_win_tie')} | "
              f"{stat(m, 'nag')} | {stat(m, 'nag_net')} |" for m in methods]
    table = "\n".join(lines)
    html = ("<html><head><meta charset='utf-8'><title>grao-pipe replication</title></head><body>"
            "<h1>grao-pipe: small-scale replication</h1><p>mean ± std over seeds</p><pre>" + table + "</pre>"
            f"<img src='data:image/png;base64,{_png(out / 'reward_by_round.png')}'/>"
            f"<img src='data:image/png;base64,{_png(out / 'grao_term_shares.png')}'/></body></html>")
    (out / "report.html").write_text(html)
    (out / "table.md").write_text(table + "\n")
    return table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="runs/replicate")
    ap.add_argument("--methods", default=",".join(METHODS))
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = []
    for seed in range(a.seeds):
        for m in a.methods.split(","):
            results.append(one(m, seed, a.rounds, out / "work"))
            print(f"[{time.perf_counter() - t0:6.0f}s] {m} seed {seed}: rewards {results[-1]['round_rewards']}, "
                  f"RAS {results[-1]['ras']:.3f}, NAG net {results[-1]['nag_net']:+.3f}", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(report(results, out))
    print(f"report: {out / 'report.html'} ({time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main()
