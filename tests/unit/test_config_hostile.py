"""Config values a hostile or careless user writes: refused at load with the key named, or
taken as the text they are."""

import pytest

from grao_pipe.config import load_config
from grao_pipe.errors import ConfigError


@pytest.mark.parametrize("override", ["train.lr=.inf", "train.grad_clip=.inf", "train.lr=.nan",
                                      "score.scorers=[{kind: function, weight: .nan}]"])
def test_non_finite_numbers_are_refused_at_load(override):
    with pytest.raises(ConfigError, match=r"finite number"):
        load_config(None, [override])


@pytest.mark.parametrize("override, key, value", [("data.prompts=*.jsonl", "prompts", "*.jsonl"),
                                                  ("name=@nightly", None, "@nightly")])
def test_an_override_that_is_not_yaml_is_taken_as_text(override, key, value):
    cfg = load_config(None, [override])
    assert (cfg.data.prompts if key else cfg.name) == value


def test_an_override_that_is_not_yaml_for_a_number_names_the_key():
    with pytest.raises(ConfigError, match=r"train.lr.*valid number"):
        load_config(None, ["train.lr=[1e-3"])
