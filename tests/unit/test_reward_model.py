"""The scalar reward-model scorer on a tiny locally built sequence classifier."""

import pytest

torch = pytest.importorskip("torch")

from grao_pipe.config import RewardModelScorer, TinyModelConfig  # noqa: E402
from grao_pipe.models.tiny import build_tiny_model  # noqa: E402
from grao_pipe.scoring.base import ScoreInput  # noqa: E402
from grao_pipe.scoring.reward_model import RewardModel  # noqa: E402


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    from transformers import AutoTokenizer, Qwen2ForSequenceClassification

    lm = build_tiny_model(TinyModelConfig(), ["1+2=3", "hello world", "4+4=8"], tmp_path_factory.mktemp("m"))
    tok = AutoTokenizer.from_pretrained(lm)
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(lm)
    cfg.num_labels = 1
    torch.manual_seed(0)
    out = lm.parent / "rm"
    Qwen2ForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_scores_do_not_depend_on_batch(rm_dir):
    texts = ["1+2=3", "4+4=8 hello", "1", "hello world 1+2", "22"]
    one = RewardModel(RewardModelScorer(path=str(rm_dir), batch_size=1), rm_dir).rewards(texts)
    many = RewardModel(RewardModelScorer(path=str(rm_dir), batch_size=4), rm_dir).rewards(texts)
    assert one == pytest.approx(many, abs=1e-5)
    assert len(set(round(v, 6) for v in one)) > 1  # a real model, not a constant


def test_reward_is_relative_to_reference(rm_dir):
    rm = RewardModel(RewardModelScorer(path=str(rm_dir), squash="none"), rm_dir)
    res = rm.score(ScoreInput.from_lists(["1+2=", "1+2="], ["3", "4"], ["3", "3"])).tolist()
    assert res[0] == pytest.approx(0.0, abs=1e-6)  # R(y, y) = 0
    # The reward model reads each answer in its own chat template, as an assistant turn.
    (t4, s4), (t3, s3) = (rm.conversation([("user", "1+2=")], answer) for answer in ("4", "3"))
    assert t4 == "user: 1+2=\nassistant: 4\n" and not s4
    r = rm.rewards([t4, t3], [s4, s3])
    assert res[1] == pytest.approx(r[0] - r[1], abs=1e-5)
