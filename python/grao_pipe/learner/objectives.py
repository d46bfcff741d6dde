"""What one rank computes for a step: per-token log-probs of the continuations a loss reads,
then the configured objective (``train.objective``) on them. Pure functions of the model, the
batch and the train config; the worker owns the loop, logging and checkpoints.

Rows of a Batch: B·G samples (row-major), then B references, then (when loaded) B rejected
answers. Objectives that read the reference (grao, sft, dpo) give zero weight to a group whose
reference did not fit ``train.max_seq_len`` (``Batch.reference_fits_B``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from grao_pipe import losses
from grao_pipe.config import TrainConfig
from grao_pipe.learner import attention
from grao_pipe.learner.data import Batch, Packed
from grao_pipe.learner.logprobs import CausalLMLogpsValues, as_logps_model

StepOut = tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]


def forward(model: torch.nn.Module, batch: Batch, device: torch.device, packed: Packed | None = None,
            chunk_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log πθ of the next tokens the losses read (continuation targets), [N, T-1] in the Batch
    layout, 0 elsewhere; padded or packed forward, LM head chunked by ``chunk_tokens`` (0: off).
    Second value: the value head's V at the same positions (the state before each target
    token) when the model has one (PPO), else None."""
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
    out = lm(ids.to(device), rows.to(device), cols.to(device), attention_mask=mask, position_ids_RT=position_ids,
             chunk_tokens=chunk_tokens)
    lp_K, v_K = out if isinstance(out, tuple) else (out, None)
    where = (seq.to(device), pos.to(device))
    lp_NT = torch.zeros(n, t - 1, device=device, dtype=lp_K.dtype).index_put(where, lp_K)
    v_NT = None if v_K is None else torch.zeros(n, t - 1, device=device, dtype=v_K.dtype).index_put(where, v_K)
    return lp_NT, v_NT


def token_logps(model: torch.nn.Module, batch: Batch, device: torch.device, packed: Packed | None = None,
                chunk_tokens: int = 0) -> torch.Tensor:
    """log πθ of the continuation targets, [N, T-1] (see ``forward``)."""
    return forward(model, batch, device, packed, chunk_tokens)[0]


def _samples_only_advantages(reward_BG: torch.Tensor, mask_BG: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's advantages: (R_i − μ)/(σ + ε) over each group's samples only."""
    n = mask_BG.sum(-1, keepdim=True).clamp(min=1)
    mu = (reward_BG * mask_BG).sum(-1, keepdim=True) / n
    sigma = (((reward_BG - mu) ** 2 * mask_BG).sum(-1, keepdim=True) / n).sqrt()
    return (reward_BG - mu) / (sigma + eps) * mask_BG


class _Step:
    """One micro-batch's tensors on the device, sliced by row kind."""

    def __init__(self, batch: Batch, tok_NT: torch.Tensor, values_NT: torch.Tensor | None, device: torch.device):
        self.b, self.g = batch.mask_BG.shape
        self.ns = self.b * self.g
        self.tok_NT, self.values_NT = tok_NT, values_NT
        self.mask_NT = batch.loss_mask_NT.to(device)
        self.mask_BG = batch.mask_BG.to(device)
        self.reward_BG = batch.reward_BG.to(device)
        self.ref_NT = batch.ref_NT.to(device)
        known_N = batch.behaviour_known_N.to(device)
        # Unknown behaviour log-probs: π_old := stop_grad(πθ), i.e. the on-policy ratio 1 whose
        # gradient is ∇log πθ (objectives that need real ones refuse to start without them).
        self.behaviour_NT = torch.where(known_N[:, None], batch.behaviour_NT.to(device), tok_NT.detach())
        self.known_N = known_N
        self.fits_B = batch.reference_fits_B.to(device)
        self.rejected_B = batch.rejected_mask_B.to(device)
        self.group_of_N = torch.arange(self.b, device=device).repeat_interleave(self.g)
        self.valid_N = self.mask_BG.reshape(-1) > 0
        self.refs = slice(self.ns, self.ns + self.b)
        self.rejected = slice(self.ns + self.b, self.ns + 2 * self.b) if batch.has_rejected_rows else None

    def staleness(self) -> float:
        """KL(π_b ‖ πθ) on the sampled tokens that have behaviour log-probs (0 when none has)."""
        rows = self.known_N[: self.ns] & self.valid_N
        if not bool(rows.any()):
            return 0.0
        return float(losses.staleness_kl(self.tok_NT[: self.ns][rows], self.behaviour_NT[: self.ns][rows],
                                         self.mask_NT[: self.ns][rows]))

    def sums(self) -> torch.Tensor:
        return (self.tok_NT * self.mask_NT).sum(-1)

    def ref_sums(self) -> torch.Tensor:
        return (self.ref_NT * self.mask_NT).sum(-1)


def _masked(loss_B: torch.Tensor, terms: dict[str, torch.Tensor], weight_B: torch.Tensor
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return loss_B * weight_B, {k: v * weight_B for k, v in terms.items()}


def _grao(s: _Step, batch: Batch, cfg: TrainConfig) -> StepOut:
    j_N = losses.sequence_mean_logps(s.tok_NT, s.mask_NT)
    j_exp_BG, j_im_B = j_N[: s.ns].view(s.b, s.g), j_N[s.refs]
    diag = {"staleness_kl": s.staleness()}
    weight_BG = None
    if cfg.importance_weights:
        sum_N = (s.tok_NT[: s.ns] * s.mask_NT[: s.ns]).sum(-1)
        beh_N = (s.behaviour_NT[: s.ns] * s.mask_NT[: s.ns]).sum(-1)
        weight_BG = losses.truncated_importance_weights(sum_N, beh_N, cfg.importance_cap).view(s.b, s.g)
        diag["importance_weight_mean"] = float((weight_BG * s.mask_BG).sum() / s.mask_BG.sum().clamp(min=1))
    loss_B, terms = losses.grao_loss(j_exp_BG, j_im_B, batch.adv_BG.to(s.mask_BG.device),
                                     batch.ref_adv_B.to(s.mask_BG.device), s.mask_BG, beta=cfg.beta, lam=cfg.lam,
                                     weight_BG=weight_BG, alpha=1.0 if cfg.exploration else 0.0,
                                     ref_adv_floor=cfg.reference_advantage_floor)
    return (*_masked(loss_B, terms, s.fits_B), diag)


def _sft(s: _Step, batch: Batch, cfg: TrainConfig) -> StepOut:
    j_im_B = losses.sequence_mean_logps(s.tok_NT[s.refs], s.mask_NT[s.refs])
    return (*_masked(*losses.sft_loss(j_im_B), s.fits_B), {})


def _dpo(s: _Step, batch: Batch, cfg: TrainConfig) -> StepOut:
    sum_N, ref_sum_N = s.sums(), s.ref_sums()
    chosen = torch.arange(s.ns, s.ns + s.b, device=sum_N.device)
    if cfg.dpo_pairs == "dataset":
        if s.rejected is None:
            raise ValueError("train.dpo_pairs=dataset: the batch has no rejected answers (GroupStore(rejected=True))")
        rejected = chosen + s.b
        pair_B = s.rejected_B
    else:
        # The group's worst sample (lowest reward, first on ties), only if the judge rated it
        # strictly worse than the reference: a sample that beat or tied y is no "rejected".
        reward_BG = s.reward_BG + (1 - s.mask_BG) * 1e9
        worst_B = reward_BG.argmin(-1)
        rejected = torch.arange(s.b, device=sum_N.device) * s.g + worst_B
        pair_B = (reward_BG.gather(1, worst_B[:, None])[:, 0] < 0).to(sum_N.dtype)
    pair_B = pair_B * s.fits_B
    loss_B, terms = losses.dpo_loss(sum_N[chosen], sum_N[rejected], ref_sum_N[chosen], ref_sum_N[rejected],
                                    cfg.dpo_beta)
    return (*_masked(loss_B, terms, pair_B), {"dpo_pair_share": float(pair_B.mean())})


def _grpo(s: _Step, batch: Batch, cfg: TrainConfig) -> StepOut:
    adv_N = _samples_only_advantages(s.reward_BG, s.mask_BG).reshape(-1)
    keep = s.valid_N
    ref_NT = s.ref_NT[: s.ns][keep] if cfg.grpo_kl > 0 else None
    loss_B, terms = losses.grpo_loss(s.tok_NT[: s.ns][keep], s.behaviour_NT[: s.ns][keep], ref_NT, adv_N[keep],
                                     s.mask_NT[: s.ns][keep], s.group_of_N[keep], s.b, cfg.grpo_clip, cfg.grpo_kl)
    return loss_B, terms, {"staleness_kl": s.staleness()}


def _ppo(s: _Step, batch: Batch, cfg: TrainConfig) -> StepOut:
    if s.values_NT is None:
        raise ValueError("train.objective=ppo needs the learner model with a value head (CausalLMLogpsValues)")
    keep = s.valid_N
    tok, beh, mask = s.tok_NT[: s.ns][keep], s.behaviour_NT[: s.ns][keep], s.mask_NT[: s.ns][keep]
    values = s.values_NT[: s.ns][keep]
    # Per-token KL penalty to the reference model, folded into the reward (a constant): log πθ −
    # log π_ref on the sampled tokens, with πθ the policy being trained (detached), as on-policy
    # RLHF-PPO computes it at rollout time. The stored behaviour policy is the reference itself
    # in round 1, so a penalty on it would vanish however far πθ moves.
    kl_NT = (tok.detach() - s.ref_NT[: s.ns][keep]) * mask if cfg.ppo_kl > 0 else torch.zeros_like(tok)
    rewards_NT = losses.ppo_token_rewards(s.reward_BG.reshape(-1)[keep], kl_NT, mask, cfg.ppo_kl)
    # The critic's values before this update are V_old: GAE and the value clip read them.
    old_values = values.detach()
    adv_NT, returns_NT = losses.gae(rewards_NT, old_values, mask, cfg.gamma, cfg.gae_lambda)
    loss_B, terms = losses.ppo_loss(tok, beh, losses.whiten(adv_NT, mask), values, old_values, returns_NT, mask,
                                    s.group_of_N[keep], s.b, cfg.ppo_clip, cfg.value_clip, cfg.vf_coef)
    m = mask.to(tok.dtype)
    diag = {"staleness_kl": s.staleness(), "ppo_kl": float((kl_NT * m).sum() / m.sum().clamp(min=1)),
            "value_mean": float((old_values * m).sum() / m.sum().clamp(min=1))}
    return loss_B, terms, diag


OBJECTIVES: dict[str, Callable[[_Step, Batch, TrainConfig], StepOut]] = {
    "grao": _grao, "sft": _sft, "dpo": _dpo, "grpo": _grpo, "ppo": _ppo,
}


def step_loss(model: torch.nn.Module, batch: Batch, cfg: TrainConfig, device: torch.device,
              packed: Packed | None = None) -> StepOut:
    """Per-group loss [B], its terms, and diagnostics, for one rank's share of a step."""
    tok_NT, values_NT = forward(model, batch, device, packed, cfg.logprob_chunk_tokens)
    return OBJECTIVES[cfg.objective](_Step(batch, tok_NT, values_NT, device), batch, cfg)


def learner_model(lm: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """The FSDP root for ``cfg``: the log-prob wrapper, with a value head for PPO."""
    from grao_pipe.learner.logprobs import CausalLMLogps

    return CausalLMLogpsValues(lm) if cfg.objective == "ppo" else CausalLMLogps(lm)


def uses_rejected(cfg: TrainConfig) -> bool:
    """Whether the loader must read the dataset's rejected answers."""
    return cfg.objective == "dpo" and cfg.dpo_pairs == "dataset"
