"""What one rank computes for a step: per-token log-probs of the continuations a loss reads,
then the configured objective (``train.objective``) on them. Pure functions of the model, the
batch and the train config; the worker owns the loop, logging and checkpoints."""

from __future__ import annotations

import torch

from grao_pipe import losses
from grao_pipe.config import TrainConfig
from grao_pipe.learner import attention
from grao_pipe.learner.data import Batch, Packed
from grao_pipe.learner.logprobs import as_logps_model


def token_logps(model: torch.nn.Module, batch: Batch, device: torch.device, packed: Packed | None = None,
                 chunk_tokens: int = 0) -> torch.Tensor:
    """log πθ of the next tokens the losses read (continuation targets), [N, T-1] in the Batch
    layout, 0 elsewhere; padded or packed forward, LM head chunked by ``chunk_tokens`` (0: off)."""
    lm = as_logps_model(model)
    impl = getattr(lm.config, "_attn_implementation", None) or "sdpa"
    n, t = batch.input_ids_NT.shape
    if packed is None:
        seq, pos = batch.loss_mask_NT.nonzero(as_tuple=True)
        rows, cols = seq, pos
        ids, position_ids = batch.input_ids_NT, None
        mask = attention.padded_mask(batch.attention_mask_NT, impl, device)
    else:
        # Only the positions that predict a loss token of the same sequence.
        keep = batch.loss_mask_NT[packed.dst_seq, packed.dst_pos] > 0
        seq, pos = packed.dst_seq[keep], packed.dst_pos[keep]
        rows, cols = packed.src_row[keep], packed.src_col[keep]
        ids, position_ids = packed.input_ids_RT, packed.position_ids_RT.to(device)
        mask = attention.packed_mask(packed, impl, device)
    lp_K = lm(ids.to(device), rows.to(device), cols.to(device), attention_mask=mask, position_ids_RT=position_ids,
              chunk_tokens=chunk_tokens)
    out = torch.zeros(n, t - 1, device=device, dtype=lp_K.dtype)
    return out.index_put((seq.to(device), pos.to(device)), lp_K)


def _samples_only_advantages(reward_BG: torch.Tensor, mask_BG: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's advantages: (R_i − μ)/(σ + ε) over each group's samples only."""
    n = mask_BG.sum(-1, keepdim=True).clamp(min=1)
    mu = (reward_BG * mask_BG).sum(-1, keepdim=True) / n
    sigma = (((reward_BG - mu) ** 2 * mask_BG).sum(-1, keepdim=True) / n).sqrt()
    return (reward_BG - mu) / (sigma + eps) * mask_BG


def step_loss(model: torch.nn.Module, batch: Batch, cfg: TrainConfig, device: torch.device,
              packed: Packed | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
    """Per-group loss [B], its terms, and diagnostics, for one rank's share of a step."""
    tok_NT = token_logps(model, batch, device, packed, cfg.logprob_chunk_tokens)
    mask_NT = batch.loss_mask_NT.to(device)
    b, g = batch.mask_BG.shape
    ns = b * g
    mask_BG = batch.mask_BG.to(device)
    behaviour_NT = batch.behaviour_NT.to(device)
    diag: dict[str, float] = {}
    if cfg.importance_weights or cfg.objective in ("grao", "grpo"):
        diag["staleness_kl"] = float(losses.staleness_kl(tok_NT[:ns], behaviour_NT[:ns], mask_NT[:ns]))
    if cfg.objective == "grpo":
        adv_N = _samples_only_advantages(batch.reward_BG.to(device), mask_BG).reshape(-1)
        group_of_N = torch.arange(b, device=device).repeat_interleave(g)
        keep = mask_BG.reshape(-1) > 0
        ref_NT = batch.ref_NT.to(device)[:ns][keep] if cfg.grpo_kl > 0 else None
        loss_B, terms = losses.grpo_loss(tok_NT[:ns][keep], behaviour_NT[:ns][keep], ref_NT, adv_N[keep],
                                         mask_NT[:ns][keep], group_of_N[keep], b, cfg.grpo_clip, cfg.grpo_kl)
        return loss_B, terms, diag
    j_N = losses.sequence_mean_logps(tok_NT, mask_NT)
    j_exp_BG, j_im_B = j_N[:ns].view(b, g), j_N[ns:]
    if cfg.objective == "sft":
        loss_B, terms = losses.sft_loss(j_im_B)
        return loss_B, terms, diag
    if cfg.objective == "dpo":
        sum_N = (tok_NT * mask_NT).sum(-1)
        ref_sum_N = (batch.ref_NT.to(device) * mask_NT).sum(-1)
        # Rejected = the group's worst sample (lowest reward; the first on ties).
        worst_B = (batch.reward_BG.to(device) + (1 - mask_BG) * 1e9).argmin(-1)
        rows = torch.arange(b, device=device) * g + worst_B
        loss_B, terms = losses.dpo_loss(sum_N[ns:], sum_N[rows], ref_sum_N[ns:], ref_sum_N[rows], cfg.dpo_beta)
        return loss_B, terms, diag
    weight_BG = None
    if cfg.importance_weights:
        sum_N = (tok_NT[:ns] * mask_NT[:ns]).sum(-1)
        beh_N = (behaviour_NT[:ns] * mask_NT[:ns]).sum(-1)
        weight_BG = losses.truncated_importance_weights(sum_N, beh_N, cfg.importance_cap).view(b, g)
        diag["importance_weight_mean"] = float((weight_BG * mask_BG).sum() / mask_BG.sum().clamp(min=1))
    loss_B, terms = losses.grao_loss(j_exp_BG, j_im_B, batch.adv_BG.to(device), batch.ref_adv_B.to(device),
                                     mask_BG, beta=cfg.beta, lam=cfg.lam, weight_BG=weight_BG,
                                     alpha=1.0 if cfg.exploration else 0.0)
    return loss_B, terms, diag
