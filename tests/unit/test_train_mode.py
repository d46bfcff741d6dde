"""The learner's policy: activation checkpointing really runs (training mode), and training
mode changes no loss (dropout off), so losses equal evaluation mode's."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from grao_pipe.config import TrainConfig  # noqa: E402
from grao_pipe.learner.data import Group, collate  # noqa: E402
from grao_pipe.learner.logprobs import CausalLMLogps  # noqa: E402
from grao_pipe.learner.recipe import load_policy  # noqa: E402
from grao_pipe.learner.step import step_loss  # noqa: E402
from grao_pipe.learner.train_mode import disable_dropout  # noqa: E402

CPU = torch.device("cpu")
V = 40


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small Qwen2 with non-zero dropout, saved as a Hugging Face directory."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, attention_dropout=0.3)
    path = tmp_path_factory.mktemp("dropout-model")
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    return path


def _batch():
    g = torch.Generator().manual_seed(0)

    def toks(n):
        return torch.randint(1, V, (n,), generator=g).tolist()

    groups = [Group(f"g{k}", toks(4 + k), toks(3 + k), 0.5, None, responses=[toks(2 + j) for j in range(3)],
                    advantages=[1.0, -0.5, -0.5], rewards=[1.0, 0.0, 0.0], behaviour=[None] * 3, ref=[None] * 3)
              for k in range(2)]
    return collate(groups, pad_id=0)


def _loss_and_grads(lm, cfg):
    model = CausalLMLogps(lm)
    model.zero_grad(set_to_none=True)
    loss_B, _, _ = step_loss(model, _batch(), cfg, CPU)
    loss_B.sum().backward()
    return loss_B.detach(), {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}


def _layer_forwards(lm, cfg):
    """How often the first decoder layer's MLP runs in one forward + backward (transformers
    checkpoints a layer's ``forward``, so the submodules inside it run again in backward)."""
    calls = []
    # A pre-hook: recomputation stops early, as soon as the tensors backward needs exist again.
    handle = lm.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        _loss_and_grads(lm, cfg)
    finally:
        handle.remove()
    return len(calls)


def test_activation_checkpointing_recomputes_layers_in_backward(model_dir):
    cfg = TrainConfig(activation_checkpointing=True)
    lm = load_policy(str(model_dir), cfg, CPU)
    assert lm.training
    assert _layer_forwards(lm, cfg) == 2  # forward, then the recomputation in backward
    plain = TrainConfig(activation_checkpointing=False)
    assert _layer_forwards(load_policy(str(model_dir), plain, CPU), plain) == 1


def test_training_mode_losses_equal_evaluation_mode(model_dir):
    """Dropout 0.3 in the config: the learner turns it off, so train-mode losses and gradients
    equal eval mode's, with and without checkpointing, and repeat exactly."""
    from transformers import AutoModelForCausalLM

    cfg = TrainConfig()
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ref_loss, ref_grads = _loss_and_grads(reference, cfg)
    for ckpt in (False, True):
        c = TrainConfig(activation_checkpointing=ckpt)
        lm = load_policy(str(model_dir), c, CPU)
        for _ in range(2):
            loss, grads = _loss_and_grads(lm, c)
            assert torch.equal(loss, ref_loss) if not ckpt else torch.allclose(loss, ref_loss, atol=1e-6)
            assert grads.keys() == ref_grads.keys()
            for name, g in grads.items():
                assert torch.allclose(g, ref_grads[name], atol=1e-6), name


def test_disable_dropout_finds_modules_and_rates():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = torch.nn.Dropout(0.1)
            self.attention_dropout = 0.2
            self.hidden_size = 8.0  # not a dropout rate: left alone

    b = Block()
    assert disable_dropout(b) == 2
    assert b.drop.p == 0.0 and b.attention_dropout == 0.0 and b.hidden_size == 8.0
