import pyarrow as pa
import pytest
import torch

from grao_pipe import advantages
from grao_pipe.config import AdvantageConfig
from grao_pipe.losses import grao_loss, sequence_mean_logps, sft_loss


def test_sequence_mean_logps_ignores_masked_tokens():
    lp = torch.tensor([[-1.0, -3.0, -100.0], [-2.0, -100.0, -100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.allclose(sequence_mean_logps(lp, mask), torch.tensor([-2.0, -2.0]))


def test_grao_loss_hand_computed():
    # G=2: J_exp = [-1, -2], J_im = -0.5, Â = [1, -1], Â_y = 0.5, β=0.5, λ=0.6
    # exploration = (1·-1 + -1·-2)/2 = 0.5
    # imitation   = 0.5·0.5·-0.5 = -0.125
    # alignment   = 0.6·(1·(-1+0.5) + -1·(-2+0.5))/2 = 0.3
    loss, terms = grao_loss(
        torch.tensor([[-1.0, -2.0]]), torch.tensor([-0.5]), torch.tensor([[1.0, -1.0]]),
        torch.tensor([0.5]), torch.ones(1, 2), beta=0.5, lam=0.6,
    )
    assert loss.item() == pytest.approx(-(0.5 - 0.125 + 0.3))
    assert terms["exploration"].item() == pytest.approx(-0.5)
    assert terms["imitation"].item() == pytest.approx(0.125)
    assert terms["alignment"].item() == pytest.approx(-0.3)
    assert sum(t for t in terms.values()).item() == pytest.approx(loss.item())


def test_grao_loss_masks_padded_samples():
    # The second group has one real sample; its pad slot must not change anything.
    j_exp = torch.tensor([[-1.0, -2.0], [-1.5, -99.0]])
    adv = torch.tensor([[1.0, -1.0], [0.7, 55.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, _ = grao_loss(j_exp, torch.tensor([-0.5, -0.2]), adv, torch.tensor([0.5, -0.1]), mask)
    single, _ = grao_loss(torch.tensor([[-1.5]]), torch.tensor([-0.2]), torch.tensor([[0.7]]),
                          torch.tensor([-0.1]), torch.ones(1, 1))
    assert loss[1].item() == pytest.approx(single[0].item())


def _adv(rewards, mode):
    ids = pa.array(["g"] * len(rewards))
    out = advantages.compute(ids, pa.array(rewards, pa.float64()), AdvantageConfig(mode=mode))
    return torch.tensor(out.advantage.to_pylist())[None], torch.tensor(out.reference_advantage.to_pylist()[:1])


@pytest.mark.parametrize("mode,cancels", [("samples_only", True), ("reference_in_group", False)])
def test_regulariser_reference_part_cancels_only_under_samples_only(mode, cancels):
    """λ(1/G)ΣÂ_i(J_exp − J_im) = λ(1/G)ΣÂ_i J_exp − λ J_im·mean(Â_i): with samples-only
    normalisation ΣÂ_i = 0, so J_im gets no gradient from the regulariser (design §2)."""
    adv_BG, ref_adv_B = _adv([1.0, -1.0, 0.0, 1.0, 1.0], mode)
    j_im = torch.tensor([-0.7], requires_grad=True)
    _, terms = grao_loss(torch.tensor([[-1.0, -2.0, -0.5, -1.2, -0.3]]), j_im, adv_BG, ref_adv_B,
                         torch.ones(1, 5))
    (grad,) = torch.autograd.grad(terms["alignment"].sum(), j_im)
    assert (abs(grad.item()) < 1e-6) == cancels


def test_sft_loss_is_reference_nll():
    loss, terms = sft_loss(torch.tensor([-0.25, -1.0]))
    assert torch.allclose(loss, torch.tensor([0.25, 1.0])) and torch.equal(terms["nll_reference"], loss)


def test_dpo_loss_hand_computed():
    from grao_pipe.losses import dpo_loss

    # margin = 0.1 * ((-1 - -2) - (-3 - -2.5)) = 0.15 ; loss = -log σ(0.15)
    loss, _ = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5]), 0.1)
    assert loss.item() == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(0.15)).item())


def test_grpo_loss_clipping_and_kl():
    from grao_pipe.losses import grpo_loss

    logp = torch.tensor([[-1.0, -1.0], [-2.0, -2.0]])
    behaviour = torch.tensor([[-1.5, -1.5], [-2.0, -2.0]])  # ratio e^0.5 ≈ 1.65 on sample 0
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 2)
    group = torch.tensor([0, 0])
    loss, terms = grpo_loss(logp, behaviour, None, adv, mask, group, 1, clip_eps=0.2)
    # sample 0: min(1.65·1, 1.2·1) = 1.2 ; sample 1: ratio 1 -> -1 ; mean of -(1.2) and -(-1)
    assert loss.item() == pytest.approx((-1.2 + 1.0) / 2)
    ref = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])
    _, terms = grpo_loss(logp, behaviour, ref, adv, mask, group, 1, clip_eps=0.2, kl_coef=1.0)
    d = torch.tensor(1.0)  # ref - logp on sample 1
    assert terms["kl"].item() == pytest.approx(((torch.exp(d) - d - 1) / 2).item())


def test_importance_weights_are_truncated_and_detached():
    from grao_pipe.losses import truncated_importance_weights

    lp = torch.tensor([-1.0, -5.0], requires_grad=True)
    w = truncated_importance_weights(lp, torch.tensor([-3.0, -4.0]), cap=2.0)
    assert w.tolist() == pytest.approx([2.0, float(torch.exp(torch.tensor(-1.0)))]) and not w.requires_grad
