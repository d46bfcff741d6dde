"""Training objectives as pure torch functions.

Shape suffixes: B groups, G samples per group (padded, see ``mask_BG``), N sequences, T tokens.
Each function returns a per-group loss ``[B]`` and its named terms ``[B]`` (terms sum to the
loss), so the caller decides how to average across ranks and accumulation steps.
"""

from __future__ import annotations

import torch


def sequence_mean_logps(token_logps_NT: torch.Tensor, mask_NT: torch.Tensor) -> torch.Tensor:
    """J(s) = (1/|s|) Σ_t log π(s_t | q, s_<t): length-normalised log-likelihood (docs/objectives.md)."""
    mask = mask_NT.to(token_logps_NT.dtype)
    return (token_logps_NT * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def grao_loss(
    j_exp_BG: torch.Tensor,
    j_im_B: torch.Tensor,
    adv_BG: torch.Tensor,
    ref_adv_B: torch.Tensor,
    mask_BG: torch.Tensor,
    beta: float = 0.5,
    lam: float = 0.6,
    weight_BG: torch.Tensor | None = None,
    alpha: float = 1.0,
    ref_adv_floor: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRAO (docs/objectives.md; arXiv 2508.07750, Eq. for J_GRAO), maximised per group:

        J = (1/G) Σ_i [ Â_i·J_exp(o_i) + β·Â_y·J_im(y) + λ·Â_i·(J_exp(o_i) − J_im(y)) ]

    with G the number of valid samples of the group (``mask_BG``). Loss = −J.
    Terms (as losses): exploration −(1/G)ΣÂ_i J_exp, imitation −β Â_y J_im,
    alignment regulariser −λ(1/G)ΣÂ_i (J_exp − J_im).

    ``alpha`` scales the exploration term (0 for the ablation without it).
    ``weight_BG`` (opt-in, beyond the paper): detached truncated importance weights
    min(π/π_behaviour, c) multiplying each sample's exploration and alignment terms.
    ``ref_adv_floor`` (opt-in, beyond the paper) bounds how hard the reference can be pushed
    down: every weight on J_im(y) is floored as if Â_y were max(Â_y, floor). That is β·Â_y in
    the imitation term and the regulariser's reference weight −λ·(1/G)ΣÂ_i, which equals
    λ·Â_y/G when y is a member of the group (``reference_in_group``: ΣÂ_i = −Â_y) and is
    floored at λ·floor/G. ``floor = 0``: the reference's likelihood is never pushed down.
    """
    mask = mask_BG.to(j_exp_BG.dtype)
    if weight_BG is not None:
        mask = mask * weight_BG.detach()
    g_B = mask_BG.to(j_exp_BG.dtype).sum(-1)
    inv_g = 1.0 / g_B.clamp(min=1.0)
    has_samples_B = (g_B > 0).to(j_im_B.dtype)
    exploration_B = alpha * (adv_BG * j_exp_BG * mask).sum(-1) * inv_g
    if ref_adv_floor is None:
        # (1/G) Σ_i of a term constant in i is the term itself (0 if the group has no valid sample).
        imitation_B = beta * ref_adv_B * j_im_B * has_samples_B
        alignment_B = lam * (adv_BG * (j_exp_BG - j_im_B[:, None]) * mask).sum(-1) * inv_g
    else:
        imitation_B = beta * ref_adv_B.clamp(min=ref_adv_floor) * j_im_B * has_samples_B
        ref_weight_B = (-lam * (adv_BG * mask).sum(-1) * inv_g).clamp(min=lam * ref_adv_floor * inv_g)
        alignment_B = lam * (adv_BG * j_exp_BG * mask).sum(-1) * inv_g + ref_weight_B * j_im_B * has_samples_B
    terms = {"exploration": -exploration_B, "imitation": -imitation_B, "alignment": -alignment_B}
    return -(exploration_B + imitation_B + alignment_B), terms


def sft_loss(j_im_B: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SFT baseline: negative length-normalised log-likelihood of the reference, −J_im(y)."""
    return -j_im_B, {"nll_reference": -j_im_B}


def truncated_importance_weights(
    logp_sum_N: torch.Tensor, behaviour_sum_N: torch.Tensor, cap: float
) -> torch.Tensor:
    """Sequence-level w = min(exp(log π(o) − log π_b(o)), cap), detached (truncated IS)."""
    return torch.exp((logp_sum_N - behaviour_sum_N).detach()).clamp(max=cap)


def staleness_kl(token_logps_NT: torch.Tensor, behaviour_NT: torch.Tensor, mask_NT: torch.Tensor) -> torch.Tensor:
    """KL(π_b ‖ πθ) estimated on tokens sampled from π_b: mean of log π_b − log πθ (k1)."""
    mask = mask_NT.to(token_logps_NT.dtype)
    return ((behaviour_NT - token_logps_NT.detach()) * mask).sum() / mask.sum().clamp(min=1.0)


def dpo_loss(
    chosen_B: torch.Tensor,
    rejected_B: torch.Tensor,
    ref_chosen_B: torch.Tensor,
    ref_rejected_B: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO (Rafailov et al. 2023, Eq. 7) on summed log-probs:
    −log σ(β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))])."""
    margin_B = beta * ((chosen_B - ref_chosen_B) - (rejected_B - ref_rejected_B))
    loss_B = -torch.nn.functional.logsigmoid(margin_B)
    return loss_B, {"dpo": loss_B}


def grpo_loss(
    token_logps_NT: torch.Tensor,
    behaviour_NT: torch.Tensor,
    ref_NT: torch.Tensor | None,
    adv_N: torch.Tensor,
    mask_NT: torch.Tensor,
    group_of_N: torch.Tensor,
    n_groups: int,
    clip_eps: float | None = 0.2,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO (Shao et al. 2024, DeepSeekMath Eq. 3), per group: (1/G) Σ_i (1/|o_i|) Σ_t
    −[min(r_t Â_i, clip(r_t, 1±ε) Â_i) − β_KL·D_KL,t], with r_t = πθ/π_old and the k3
    estimator of KL(πθ ‖ π_ref) per token (Eq. 4): D_KL,t = π_ref/πθ − log(π_ref/πθ) − 1 ≥ 0.

    ``behaviour_NT`` is log π_old per token. Without ``clip_eps`` the surrogate is r_t Â_i:
    pass ``behaviour_NT = token_logps_NT.detach()`` (no behaviour log-probs) for the on-policy
    surrogate, r_t = 1 with gradient Â_i ∇log πθ; passing real behaviour log-probs without
    clipping gives the unclipped importance-weighted surrogate."""
    mask = mask_NT.to(token_logps_NT.dtype)
    ratio_NT = torch.exp(token_logps_NT - behaviour_NT)
    surrogate_NT = ratio_NT * adv_N[:, None]
    if clip_eps is not None:
        clipped_NT = ratio_NT.clamp(1 - clip_eps, 1 + clip_eps) * adv_N[:, None]
        surrogate_NT = torch.minimum(surrogate_NT, clipped_NT)
    per_seq = lambda x_NT: (x_NT * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # noqa: E731
    policy_N = -per_seq(surrogate_NT)
    kl_N = torch.zeros_like(policy_N)
    if ref_NT is not None and kl_coef > 0:
        d_NT = ref_NT - token_logps_NT
        kl_N = kl_coef * per_seq(torch.exp(d_NT) - d_NT - 1)
    # Mean over each group's samples (in the inputs' dtype: float64 inputs stay float64).
    policy_B, kl_B = _group_mean(policy_N, group_of_N, n_groups), _group_mean(kl_N, group_of_N, n_groups)
    return policy_B + kl_B, {"policy": policy_B, "kl": kl_B}


def ppo_token_rewards(score_N: torch.Tensor, kl_NT: torch.Tensor, mask_NT: torch.Tensor,
                      kl_coef: float) -> torch.Tensor:
    """Per-token rewards of RLHF-PPO (Ouyang et al. 2022, Eq. 2; Ziegler et al. 2019):
    r_t = −β_KL·kl_t on every response token, plus the sequence's score R(o, y) on its last
    token. ``kl_NT`` = log π(o_t) − log π_ref(o_t) on the sampled tokens (the per-token estimate
    of KL(π ‖ π_ref), a constant here); ``mask_NT`` marks each row's contiguous response tokens."""
    mask = mask_NT.to(kl_NT.dtype)
    t = mask.shape[1]
    positions = torch.arange(t, device=mask.device, dtype=kl_NT.dtype)
    last_N = (mask * positions).argmax(-1)  # index of each row's last response token
    rewards_NT = -kl_coef * kl_NT * mask
    has_tokens_N = mask.sum(-1) > 0
    add_NT = torch.zeros_like(rewards_NT).scatter(1, last_N[:, None], (score_N * has_tokens_N)[:, None].to(kl_NT.dtype))
    return rewards_NT + add_NT


def gae(rewards_NT: torch.Tensor, values_NT: torch.Tensor, mask_NT: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, Eq. 16) over each row's response:
    δ_t = r_t + γ V_{t+1} − V_t with V = 0 after the last token (terminal), Â_t = Σ_l (γλ)^l δ_{t+l}.
    Returns (advantages, returns = Â + V), 0 outside ``mask_NT``; no gradient flows."""
    rewards, values = rewards_NT.detach(), values_NT.detach()
    mask = mask_NT.to(values.dtype)
    n, t = rewards.shape
    adv = torch.zeros_like(rewards)
    running = torch.zeros(n, dtype=rewards.dtype, device=rewards.device)
    for k in reversed(range(t)):
        m_next = mask[:, k + 1] if k + 1 < t else torch.zeros_like(running)
        v_next = values[:, k + 1] * m_next if k + 1 < t else torch.zeros_like(running)
        delta = rewards[:, k] + gamma * v_next - values[:, k]
        running = delta + gamma * lam * m_next * running
        adv[:, k] = running * mask[:, k]
    return adv, (adv + values) * mask


def whiten(x_NT: torch.Tensor, mask_NT: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / std over the masked entries (advantage normalisation of PPO implementations,
    e.g. Schulman et al.'s baselines ppo2); 0 outside the mask. Fewer than 2 entries: centred only."""
    mask = mask_NT.to(x_NT.dtype)
    n = mask.sum()
    mean = (x_NT * mask).sum() / n.clamp(min=1.0)
    var = (((x_NT - mean) ** 2) * mask).sum() / (n - 1).clamp(min=1.0)
    scale = torch.rsqrt(var + eps) if n > 1 else torch.ones_like(var)
    return (x_NT - mean) * scale * mask


def ppo_loss(
    token_logps_NT: torch.Tensor,
    behaviour_NT: torch.Tensor,
    adv_NT: torch.Tensor,
    values_NT: torch.Tensor,
    old_values_NT: torch.Tensor,
    returns_NT: torch.Tensor,
    mask_NT: torch.Tensor,
    group_of_N: torch.Tensor,
    n_groups: int,
    clip_eps: float = 0.2,
    value_clip: float | None = 0.2,
    vf_coef: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO (Schulman et al. 2017): the clipped surrogate (Eq. 7) per token,
    −min(r_t Â_t, clip(r_t, 1±ε) Â_t) with r_t = πθ/π_old, plus c_V times the value loss
    ½·max((V_t − G_t)², (V_old + clip(V_t − V_old, ±ε_V) − G_t)²) (the clipped value loss of the
    authors' ppo2 implementation; ``value_clip=None``: ½(V_t − G_t)²). Token means per sequence,
    then the mean over each group's sequences, like ``grpo_loss``. Returns loss [n_groups]
    and its terms ``policy`` and ``value``; ``adv_NT`` and ``returns_NT`` are constants."""
    mask = mask_NT.to(token_logps_NT.dtype)
    adv, returns = adv_NT.detach(), returns_NT.detach()
    ratio_NT = torch.exp(token_logps_NT - behaviour_NT)
    surrogate_NT = torch.minimum(ratio_NT * adv, ratio_NT.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    value_err_NT = (values_NT - returns) ** 2
    if value_clip is not None:
        old = old_values_NT.detach()
        clipped_NT = old + (values_NT - old).clamp(-value_clip, value_clip)
        value_err_NT = torch.maximum(value_err_NT, (clipped_NT - returns) ** 2)
    per_seq = lambda x_NT: (x_NT * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # noqa: E731
    policy_B = _group_mean(-per_seq(surrogate_NT), group_of_N, n_groups)
    value_B = _group_mean(vf_coef * 0.5 * per_seq(value_err_NT), group_of_N, n_groups)
    return policy_B + value_B, {"policy": policy_B, "value": value_B}


def _group_mean(x_N: torch.Tensor, group_of_N: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Mean of each group's entries, [n_groups] (0 for a group without entries)."""
    count_B = torch.zeros(n_groups, device=x_N.device, dtype=x_N.dtype).index_add(0, group_of_N, torch.ones_like(x_N))
    total_B = torch.zeros(n_groups, device=x_N.device, dtype=x_N.dtype).index_add(0, group_of_N, x_N)
    return total_B / count_B.clamp(min=1)
