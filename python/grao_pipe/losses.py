"""Training objectives as pure torch functions.

Shape suffixes: B groups, G samples per group (padded, see ``mask_BG``), N sequences, T tokens.
Each function returns a per-group loss ``[B]`` and its named terms ``[B]`` (terms sum to the
loss), so the caller decides how to average across ranks and accumulation steps.
"""

from __future__ import annotations

import torch


def sequence_mean_logps(token_logps_NT: torch.Tensor, mask_NT: torch.Tensor) -> torch.Tensor:
    """J(s) = (1/|s|) Σ_t log π(s_t | q, s_<t): length-normalised log-likelihood (design §2)."""
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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRAO, design §2 (arXiv 2508.07750, Eq. for J_GRAO), maximised per group:

        J = (1/G) Σ_i [ Â_i·J_exp(o_i) + β·Â_y·J_im(y) + λ·Â_i·(J_exp(o_i) − J_im(y)) ]

    with G the number of valid samples of the group (``mask_BG``). Loss = −J.
    Terms (as losses): exploration −(1/G)ΣÂ_i J_exp, imitation −β Â_y J_im,
    alignment regulariser −λ(1/G)ΣÂ_i (J_exp − J_im).

    ``alpha`` scales the exploration term (0 for the ablation without it).
    ``weight_BG`` (opt-in, beyond the paper): detached truncated importance weights
    min(π/π_behaviour, c) multiplying each sample's exploration and alignment terms.
    """
    mask = mask_BG.to(j_exp_BG.dtype)
    if weight_BG is not None:
        mask = mask * weight_BG.detach()
    g_B = mask_BG.to(j_exp_BG.dtype).sum(-1)
    inv_g = 1.0 / g_B.clamp(min=1.0)
    exploration_B = alpha * (adv_BG * j_exp_BG * mask).sum(-1) * inv_g
    # (1/G) Σ_i of a term constant in i is the term itself (0 if the group has no valid sample).
    imitation_B = beta * ref_adv_B * j_im_B * (g_B > 0).to(j_im_B.dtype)
    alignment_B = lam * (adv_BG * (j_exp_BG - j_im_B[:, None]) * mask).sum(-1) * inv_g
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
    """GRPO (Shao et al. 2024, Eq. 3), per group: (1/G) Σ_i (1/|o_i|) Σ_t
    −[min(r_t Â_i, clip(r_t, 1±ε) Â_i) − β_KL·D_KL,t], with r_t = πθ/π_behaviour and the k3
    estimator D_KL,t = π_ref/πθ − log(π_ref/πθ) − 1. Without ``clip_eps`` the surrogate is
    r_t Â_i (on-policy: r_t = 1 with gradient ∇log πθ)."""
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
    # Mean over each group's samples.
    ones = torch.ones_like(policy_N)
    count_B = torch.zeros(n_groups, device=policy_N.device).index_add(0, group_of_N, ones)
    policy_B = torch.zeros(n_groups, device=policy_N.device).index_add(0, group_of_N, policy_N) / count_B.clamp(min=1)
    kl_B = torch.zeros(n_groups, device=policy_N.device).index_add(0, group_of_N, kl_N) / count_B.clamp(min=1)
    return policy_B + kl_B, {"policy": policy_B, "kl": kl_B}
