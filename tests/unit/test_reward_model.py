"""The scalar reward-model scorer on a tiny locally built sequence classifier."""

import pytest

torch = pytest.importorskip("torch")

from grao_pipe.config import RewardModelScorer, TinyModelConfig  # noqa: E402
from grao_pipe.models.tiny import build_tiny_model  # noqa: E402
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
    one = RewardModel(RewardModelScorer(path=str(rm_dir), batch_size=1)).rewards(texts)
    many = RewardModel(RewardModelScorer(path=str(rm_dir), batch_size=4)).rewards(texts)
    assert one == pytest.approx(many, abs=1e-5)
    assert len(set(round(v, 6) for v in one)) > 1  # a real model, not a constant


def test_reward_is_relative_to_reference(rm_dir):
    rm = RewardModel(RewardModelScorer(path=str(rm_dir), squash="none"))
    res = rm.score(["1+2=", "1+2="], ["3", "4"], ["3", "3"])
    assert res.values[0] == pytest.approx(0.0, abs=1e-6)  # R(y, y) = 0
    # The tiny tokenizer has a chat template: a plain-text prompt is one user turn in it.
    texts = [rm.conversation_text("1+2=", None, o) for o in ("4", "3")]
    assert texts[0] == ("user: 1+2=\nassistant: 4\n", False)
    r = rm.rewards([t for t, _ in texts], False)
    assert res.values[1] == pytest.approx(r[0] - r[1], abs=1e-5)


POLICY_RENDERED = "<|im_start|>system\nYou are SmolLM<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"


def test_chat_prompts_are_scored_in_the_reward_models_own_template(rm_dir):
    """Not prompt + response as one raw string of the policy's rendering."""
    rm = RewardModel(RewardModelScorer(path=str(rm_dir)))
    stored = [{"role": "user", "content": "hello"}]
    text, special = rm.conversation_text(POLICY_RENDERED, stored, "world")
    assert (text, special) == ("user: hello\nassistant: world\n", False)
    res = rm.score([POLICY_RENDERED, "garbage the rm must not read"], ["world", "1+2"], ["hello world", "hello world"],
                   messages=[stored, [("user", "hello")]])
    r = rm.rewards(["user: hello\nassistant: world\n", "user: hello\nassistant: 1+2\n",
                    "user: hello\nassistant: hello world\n"], False)
    assert res.values == pytest.approx([r[0] - r[2], r[1] - r[2]], abs=1e-5)


def test_a_reward_model_without_template_reads_plain_turns(rm_dir, tmp_path):
    import shutil

    plain = tmp_path / "rm-plain"
    shutil.copytree(rm_dir, plain)
    for f in plain.glob("chat_template.*"):
        f.unlink()
    rm = RewardModel(RewardModelScorer(path=str(plain)))
    assert not rm.tok.chat_template
    assert rm.conversation_text(POLICY_RENDERED, [("user", "hello")], "world") == ("User: hello\n\nAssistant: world", True)
    assert rm.conversation_text("1+2=", None, "3") == ("1+2=3", True)  # plain text: as before
