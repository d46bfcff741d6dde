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


def test_gae_hand_computed_with_prompt_and_padding_masked():
    from grao_pipe.losses import gae

    # Row layout: [prompt, o_0, o_1, o_2, pad]; γ = 0.9, λ = 0.5, V = [.5, .2, .8], reward 1 at o_2.
    # δ_2 = 1 − .8 = .2                 Â_2 = .2
    # δ_1 = 0 + .9·.8 − .2 = .52        Â_1 = .52 + .45·.2 = .61
    # δ_0 = 0 + .9·.2 − .5 = −.32       Â_0 = −.32 + .45·.61 = −.0455
    mask = torch.tensor([[0.0, 1, 1, 1, 0]])
    rewards = torch.tensor([[0.0, 0, 0, 1, 0]])
    values = torch.tensor([[9.0, 0.5, 0.2, 0.8, 9.0]])  # outside the mask: ignored
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    assert adv[0].tolist() == pytest.approx([0, -0.0455, 0.61, 0.2, 0], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([0, 0.4545, 0.81, 1.0, 0], abs=1e-6)
    # γ = λ = 1 and V = 0: every token's advantage is the sum of the rewards after it.
    adv1, _ = gae(rewards, torch.zeros_like(values), mask, gamma=1.0, lam=1.0)
    assert adv1[0].tolist() == pytest.approx([0, 1, 1, 1, 0])


def test_ppo_token_rewards_put_the_score_on_the_last_token():
    from grao_pipe.losses import ppo_token_rewards

    mask = torch.tensor([[0.0, 1, 1, 1, 0], [0.0, 1, 0, 0, 0]])
    kl = torch.tensor([[5.0, 0.1, -0.2, 0.3, 5.0], [0.0, 0.4, 0, 0, 0]])
    r = ppo_token_rewards(torch.tensor([1.0, -1.0]), kl, mask, kl_coef=0.5)
    assert r.tolist()[0] == pytest.approx([0, -0.05, 0.1, -0.15 + 1.0, 0])
    assert r.tolist()[1] == pytest.approx([0, -0.2 - 1.0, 0, 0, 0])


def test_whiten_over_the_mask():
    from grao_pipe.losses import whiten

    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    w = whiten(x, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert w.tolist()[0] == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)  # sample std of 1,2,3 is 1


def test_ppo_loss_signs_clipping_and_value_loss():
    from grao_pipe.losses import ppo_loss

    mask = torch.ones(2, 1)
    group = torch.tensor([0, 0])
    adv = torch.tensor([[1.0], [-1.0]])
    behaviour = torch.log(torch.tensor([[0.5], [0.5]]))
    ret = torch.tensor([[1.0], [-1.0]])

    def run(logp, values, old_values, value_clip=0.2):
        lp = torch.log(torch.tensor(logp)).requires_grad_()
        v = torch.tensor(values, requires_grad=True)
        loss, terms = ppo_loss(lp, behaviour, adv, v, torch.tensor(old_values), ret, mask, group, 1,
                               clip_eps=0.2, value_clip=value_clip, vf_coef=0.5)
        loss.sum().backward()
        return loss, terms, lp.grad, v.grad

    # At the behaviour policy (ratio 1): d loss/d logπ = −Â/G: the positive sample is pushed up.
    _, terms, g_lp, g_v = run([[0.5], [0.5]], [[0.0], [0.0]], [[0.0], [0.0]])
    assert g_lp.flatten().tolist() == pytest.approx([-0.5, 0.5])
    assert terms["policy"].item() == pytest.approx(0.0)
    # value: c_V·½·(V − G)²/G per sample -> d/dV = c_V·(V − G)/G
    assert terms["value"].item() == pytest.approx(0.5 * 0.5 * (1 + 1) / 2)
    assert g_v.flatten().tolist() == pytest.approx([0.5 * -1 / 2, 0.5 * 1 / 2])
    # Ratio 1.6 > 1 + ε with Â > 0: clipped, no gradient; ratio 0.6 < 1 − ε with Â < 0: clipped too.
    _, _, g_lp, _ = run([[0.8], [0.3]], [[0.0], [0.0]], [[0.0], [0.0]])
    assert g_lp.flatten().tolist() == pytest.approx([0.0, 0.0])
    # V moved 0.5 away from the return (past the clip 0.2): the unclipped error is the larger one.
    _, terms_c, _, g_v = run([[0.5], [0.5]], [[-0.5], [0.5]], [[0.0], [0.0]])
    # sample 0: max((−.5−1)², (−.2−1)²) = 2.25; sample 1: max((.5+1)², (.2+1)²) = 2.25
    assert terms_c["value"].item() == pytest.approx(0.5 * 0.5 * (2.25 + 2.25) / 2)
    # Moving V past the clip toward the return: the clipped error is the larger one, no gradient.
    _, terms_d, _, g_v = run([[0.5], [0.5]], [[0.5], [-0.5]], [[0.0], [0.0]])
    assert terms_d["value"].item() == pytest.approx(0.5 * 0.5 * (0.64 + 0.64) / 2)
    assert g_v.flatten().tolist() == pytest.approx([0.0, 0.0])
    _, terms_e, _, _ = run([[0.5], [0.5]], [[0.5], [-0.5]], [[0.0], [0.0]], value_clip=None)
    assert terms_e["value"].item() == pytest.approx(0.5 * 0.5 * (0.25 + 0.25) / 2)


def test_reference_advantage_floor_bounds_every_weight_on_the_reference():
    """All samples beat y: Â_y < 0 pushes J_im down through imitation and the regulariser;
    floor 0 removes both pushes and leaves the samples' terms unchanged."""
    adv_BG, ref_adv_B = _adv([1.0] * 8, "reference_in_group")
    j_exp = torch.full((1, 8), -1.0, requires_grad=True)
    j_im = torch.tensor([-0.7], requires_grad=True)
    loss, _ = grao_loss(j_exp, j_im, adv_BG, ref_adv_B, torch.ones(1, 8))
    g_exp, g_im = torch.autograd.grad(loss.sum(), (j_exp, j_im))
    assert g_im.item() > 0  # descent lowers J_im: the reference is pushed down
    floored, _ = grao_loss(j_exp, j_im, adv_BG, ref_adv_B, torch.ones(1, 8), ref_adv_floor=0.0)
    f_exp, f_im = torch.autograd.grad(floored.sum(), (j_exp, j_im))
    assert f_im.item() == 0.0 and torch.allclose(f_exp, g_exp)
    # A floor below Â_y changes nothing; without a floor the result is unchanged too.
    same, _ = grao_loss(j_exp, j_im, adv_BG, ref_adv_B, torch.ones(1, 8), ref_adv_floor=-10.0)
    assert same.item() == pytest.approx(loss.item(), abs=1e-6)
    # A positive Â_y (all samples wrong) is left alone by floor 0.
    adv2, ref2 = _adv([-1.0] * 8, "reference_in_group")
    a, _ = grao_loss(j_exp, j_im, adv2, ref2, torch.ones(1, 8))
    b, _ = grao_loss(j_exp, j_im, adv2, ref2, torch.ones(1, 8), ref_adv_floor=0.0)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


# --- Consequences of the Â_y reading (design §2), checked before they are documented ------------

def test_all_wrong_group_pushes_every_sample_down():
    """reference_in_group, G = 8, every sample wrong (R = −1): Â_i = −1/√8 ≈ −0.354 for all i, so
    the samples' advantages sum to −Â_y and every sample's likelihood gets a downward push."""
    adv_BG, ref_adv_B = _adv([-1.0] * 8, "reference_in_group")
    assert adv_BG[0].tolist() == pytest.approx([-(8 ** -0.5)] * 8, abs=1e-5)
    assert adv_BG.sum().item() == pytest.approx(-ref_adv_B.item(), abs=1e-5)
    j_exp = torch.full((1, 8), -1.0, requires_grad=True)
    loss, _ = grao_loss(j_exp, torch.tensor([-0.5]), adv_BG, ref_adv_B, torch.ones(1, 8))
    (g,) = torch.autograd.grad(loss.sum(), j_exp)
    # d loss / d J_exp(o_i) = −(1 + λ)·Â_i / G > 0: descent lowers every sample.
    assert (g > 0).all() and g[0, 0].item() == pytest.approx(1.6 * 8 ** -0.5 / 8, abs=1e-5)


def test_when_every_sample_beats_the_reference_its_push_down_is_unbounded():
    """All R = +1: Â_y = −√8 ≈ −2.83; the weight on J_im is (β + λ/G)·Â_y ≈ −1.63 and does not
    shrink as J_im falls: nothing in Eq. 3 stops pushing the reference's likelihood down."""
    adv_BG, ref_adv_B = _adv([1.0] * 8, "reference_in_group")
    assert ref_adv_B.item() == pytest.approx(-(8 ** 0.5), abs=1e-5)
    grads = []
    for value in (-0.5, -5.0, -50.0):
        j_im = torch.tensor([value], requires_grad=True)
        loss, _ = grao_loss(torch.full((1, 8), -1.0), j_im, adv_BG, ref_adv_B, torch.ones(1, 8))
        (g,) = torch.autograd.grad(loss.sum(), j_im)
        grads.append(g.item())
    assert grads == pytest.approx([(0.5 + 0.6 / 8) * 8 ** 0.5] * 3, abs=1e-5)  # d(−J)/dJ_im ≈ +1.63


def test_regulariser_is_a_reweighting_of_exploration_and_imitation():
    """Under reference_in_group, λ(1/G)ΣÂ_i(J_exp − J_im) = λ·(1/G)ΣÂ_i J_exp + (λ/G)·Â_y·J_im
    (since ΣÂ_i = −Â_y), so GRAO(β, λ) = GRAO with exploration ×(1 + λ), β + λ/G and no λ term."""
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randint(-1, 2, (5, 8), generator=gen).double()
    adv = [_adv(r.tolist(), "reference_in_group") for r in rewards]
    adv_BG, ref_adv_B = torch.cat([a for a, _ in adv]).double(), torch.cat([r for _, r in adv]).double()
    j_exp = (-torch.rand(5, 8, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    j_im = (-torch.rand(5, generator=gen, dtype=torch.float64)).requires_grad_()
    mask = torch.ones(5, 8, dtype=torch.float64)
    full, _ = grao_loss(j_exp, j_im, adv_BG, ref_adv_B, mask, beta=0.5, lam=0.6)
    reweighted, _ = grao_loss(j_exp, j_im, adv_BG, ref_adv_B, mask, beta=0.5 + 0.6 / 8, lam=0.0, alpha=1.6)
    assert torch.allclose(full, reweighted, atol=1e-6)
    ga = torch.autograd.grad(full.sum(), (j_exp, j_im))
    gb = torch.autograd.grad(reweighted.sum(), (j_exp, j_im))
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(ga, gb, strict=True))


def test_grpo_loss_keeps_float64():
    """float64 inputs (the TRL oracle's precision) stay float64 through the group means."""
    from grao_pipe.losses import grpo_loss

    lp = torch.tensor([[-1.0, -2.0], [-0.5, -0.25]], dtype=torch.float64, requires_grad=True)
    loss_B, terms = grpo_loss(lp, lp.detach(), lp.detach() - 0.1, torch.tensor([1.0, -1.0], dtype=torch.float64),
                              torch.ones(2, 2), torch.tensor([0, 0]), 1, clip_eps=0.2, kl_coef=0.1)
    assert loss_B.dtype == terms["kl"].dtype == torch.float64
    loss_B.sum().backward()
    assert lp.grad.dtype == torch.float64 and torch.isfinite(lp.grad).all()
