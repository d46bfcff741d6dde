"""Eval applies score's rule: past score.max_invalid_share of invalid rewards it refuses (exit 5)
instead of reporting metrics on a handful of prompts."""

import pytest
from stage_runner import run_stage

from grao_pipe.config import load_config
from grao_pipe.errors import DataError

MOSTLY_INVALID = {"kind": "function", "name": "mi", "function": "counting_scorer:mostly_invalid"}


def test_eval_refuses_past_the_invalid_share(tiny_config, tiny_model_dir):
    ev = {"model": str(tiny_model_dir), "base_model": str(tiny_model_dir), "scorer": MOSTLY_INVALID,
          "limit": 9, "prompts": "builtin:arith"}
    cfg = load_config(tiny_config(eval=ev))
    with pytest.raises(DataError, match=r"eval \(round 1\): 12 of 18 rewards are invalid \(67%.* over "
                                        r"score.max_invalid_share=0.5; the metrics would rest on 3 prompts") as e:
        run_stage("eval", cfg)
    assert e.value.exit_code == 5
    relaxed = load_config(tiny_config(eval=ev, score={"max_invalid_share": 1.0}))
    out = run_stage("eval", relaxed)
    st = out.manifest.stats
    assert st.invalid == {"model": 6, "base": 6} and st.nag["net"].n == 3
