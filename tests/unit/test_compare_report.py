"""The compare section's checks, the lr choice on validation and the report's numbers, on
synthetic per-prompt rows (the statistics themselves: test_compare_stats.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from grao_pipe.compare import report, stats
from grao_pipe.compare.run import read_results, select_lr, write_results
from grao_pipe.config import CompareConfig, load_config
from grao_pipe.errors import ConfigError

BASE = {"variants": [{"name": "a"}, {"name": "b", "overrides": ["train.objective=sft"]}], "baseline": "b",
        "seeds": [0, 1, 2, 3, 4, 5, 6, 7], "test_prompts": "builtin:sums_test"}


def cmp_cfg(**extra) -> CompareConfig:
    return CompareConfig.model_validate({**BASE, **extra})


@pytest.mark.parametrize(("extra", "message"), [
    ({"baseline": "c"}, "compare.baseline 'c' is not a variant"),
    ({"validation_seeds": [7, 8]}, r"seeds \[7\] are both test and validation seeds"),
    ({"variants": [{"name": "a"}, {"name": "b", "overrides": ["train.seed=3"]}]}, "train.seed is set by compare itself"),
    ({"variants": [{"name": "a"}, {"name": "b", "overrides": ["train.objective"]}]}, "is not key=value"),
    ({"variants": [{"name": "a", "lr_grid": [1e-3]}, {"name": "b"}]}, "set both"),
    ({"variants": [{"name": "a"}, {"name": "b", "lr_from": "a"}]}, "not a variant with an lr_grid"),
    ({"families": [{"name": "f", "claims": [{"variant": "b"}]}]}, "compares b with itself"),
    ({"families": [{"name": "f", "claims": [{"variant": "z"}]}]}, "claim variant 'z' is not a variant"),
    ({"variants": [{"name": "a"}, {"name": "a"}]}, "names must be unique"),
])
def test_compare_section_refuses_inconsistent_plans(tmp_path, extra, message):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"compare": {**BASE, **extra}}))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def _rows(variant: str, means: list[float], split: str = "test", lr: float = 1e-3, n_prompts: int = 6,
          base: float = 0.0) -> list[dict]:
    """One row per (seed, prompt): reward = the seed's mean ± 0.5 alternating (so the seed's mean
    over prompts is exactly ``means[seed]``)."""
    return [{"split": split, "variant": variant, "lr": lr, "seed": s, "prompt_id": f"p{j}", "prompt_index": j,
             "prompt": f"q{j}", "reference": "y", "answer": "o", "base_answer": "b",
             "reward": m + (0.5 if j % 2 else -0.5), "base_reward": base, "train_key": "t", "eval_key": "e",
             "config_digest": "d", "commit": None, "versions": "{}"}
            for s, m in enumerate(means) for j in range(n_prompts)]


def test_lr_chosen_on_validation_ties_to_the_smaller_rate():
    cfg = cmp_cfg(variants=[{"name": "a", "lr_grid": [1e-4, 1e-3, 1e-2]}, {"name": "b", "lr_from": "a"},
                            {"name": "c"}], baseline="c", validation_seeds=[100, 101],
                  validation_prompts="builtin:sums_validation")
    rows = (_rows("a", [0.1, 0.3], "validation", 1e-4) + _rows("a", [0.3, 0.1], "validation", 1e-3)
            + _rows("a", [0.0, 0.1], "validation", 1e-2))
    assert select_lr(rows, cfg, stats) == {"a": 1e-4, "b": 1e-4, "c": None}


C_DIFFS = [0.05, -0.05, 0.1, -0.1, 0.02, -0.03, 0.04, -0.01]  # no consistent sign: not shown


def test_summary_seed_level_tests_and_holm_within_family(tmp_path):
    cfg = cmp_cfg(variants=[{"name": "a"}, {"name": "c"}, {"name": "b"}], metrics=["mean_reward", "nag_net"],
                  families=[{"name": "main", "claims": [{"variant": "a"}, {"variant": "c"},
                                                        {"variant": "a", "metric": "nag_net"}]}])
    rng = np.random.default_rng(0)
    b_means = rng.normal(0, 0.1, 8).tolist()
    rows = (_rows("a", [m + 0.3 for m in b_means]) + _rows("c", [m + d for m, d in zip(b_means, C_DIFFS, strict=True)])
            + _rows("b", b_means))
    s = report.summarise(rows, cfg)
    claims = s["families"][0]["claims"]
    # a − b is +0.3 in every seed: the exact sign-flip test's floor, 2/2^8.
    assert claims[0]["p"]["value"] == pytest.approx(2 / 256) and claims[0]["diff"]["value"] == pytest.approx(0.3)
    assert [c["p_holm"] for c in claims] == pytest.approx(stats.holm([c["p"]["value"] for c in claims]))
    assert claims[0]["shown"] and not claims[1]["shown"] and np.isfinite(claims[1]["mde"])
    # per-seed values of a variant: each seed's mean over its prompts
    a = next(v for v in s["variants"] if v["variant"] == "a")
    assert [a["metrics"]["mean_reward"]["per_seed"][k] for k in range(8)] == pytest.approx([m + 0.3 for m in b_means])
    md = report.markdown(s)
    assert "p Holm" in md and "(the minimum with 8 seeds)" in md and f"MDE {claims[1]['mde']:.3f}" in md
    # the written results round-trip, and the report re-renders the same numbers from them
    write_results(tmp_path / "results.parquet", rows, {"compare": cfg.model_dump(mode="json"), "seconds": 1.0})
    back_rows, back_cfg, meta = read_results(tmp_path / "results.parquet")
    assert back_cfg == cfg and report.markdown(report.summarise(back_rows, back_cfg)) == md
    s2 = report.write(tmp_path, back_rows, back_cfg, meta)
    assert (tmp_path / "mean_reward.png").stat().st_size > 1000 and "<table>" in (tmp_path / "report.html").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["families"][0]["claims"][0]["shown"] is True
    fig = report.figure(s2, "mean_reward")
    points = [c for c in fig.axes[0].collections if c.get_offsets().shape[0] == 8]
    assert len(points) == 4  # starting policy + 3 variants, each with its 8 seeds drawn as points


def test_report_refuses_unpaired_prompts():
    cfg = cmp_cfg(families=[{"name": "f", "claims": [{"variant": "a"}]}])
    rows = _rows("a", [0.1] * 8) + [r for r in _rows("b", [0.0] * 8) if not (r["seed"] == 3 and r["prompt_id"] == "p2")]
    with pytest.raises(stats.PairingError, match=r"a vs b: .*1 in a only \(seed 3 prompt p2\)"):
        report.summarise(rows, cfg)


def test_monte_carlo_p_values_are_written_as_bounds():
    """Past 16 seeds the test is Monte Carlo: a p at its resolution is written p < 1/B, and its
    Holm adjustment < m/B, never as a number below what B draws resolve."""
    seeds = list(range(20))
    cfg = cmp_cfg(seeds=seeds, permutations=1000,
                  families=[{"name": "f", "claims": [{"variant": "a"}, {"variant": "a", "metric": "ras_strict"}]}])
    rows = _rows("a", [0.4 + 0.01 * s for s in seeds]) + _rows("b", [0.0] * 20)
    md = report.markdown(report.summarise(rows, cfg))
    assert "| p < 0.001 | < 0.002 | shown |" in md
