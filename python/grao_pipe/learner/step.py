"""What one rank computes for a micro-batch: per-token log-probs of the continuations a loss
reads, then the configured objective's loss (``grao_pipe.learner.objectives``) on them. Pure
functions of the model, the batch and the train config; the recipe owns the loop, logging and
checkpoints.

Rows of a Batch: B·G samples (row-major), then B references, then (when loaded) B rejected
answers. Objectives that read the reference (grao, sft, dpo) give zero weight to a group whose
reference did not fit ``train.max_seq_len`` (``Batch.reference_fits_B``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grao_pipe import losses
from grao_pipe.config import TrainConfig
from grao_pipe.learner import attention
from grao_pipe.learner.data import Batch, Packed
from grao_pipe.learner.logprobs import CausalLMLogps, CausalLMLogpsValues, as_logps_model
from grao_pipe.learner.objectives import StepOut


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


@dataclass(frozen=True)
class StepTotals:
    """Counts over the whole optimizer step (every rank, every micro-batch), for losses that
    normalise by the step rather than by group: token-level sums (DAPO, Dr. GRPO)."""

    groups: int  # groups of the step: the recipe averages the per-group losses over them
    samples: int  # valid sample sequences
    sample_tokens: int  # their continuation tokens


def sample_counts(batch: Batch) -> tuple[int, int]:
    """(valid sample sequences, their continuation tokens) of one micro-batch."""
    valid_N = batch.mask_BG.reshape(-1) > 0
    return int(valid_N.sum()), int(batch.loss_mask_NT[: batch.n_samples][valid_N].sum())


class StepTensors:
    """One micro-batch's tensors on the device, sliced by row kind: what a loss adapter reads."""

    def __init__(self, batch: Batch, tok_NT: torch.Tensor, values_NT: torch.Tensor | None, device: torch.device,
                 totals: StepTotals | None = None):
        self.b, self.g = batch.mask_BG.shape
        self.ns = self.b * self.g
        self.tok_NT, self.values_NT = tok_NT, values_NT
        self.mask_NT = batch.loss_mask_NT.to(device)
        self.mask_BG = batch.mask_BG.to(device)
        self.reward_BG = batch.reward_BG.to(device)
        self.adv_BG = batch.adv_BG.to(device)
        self.ref_adv_B = batch.ref_adv_B.to(device)
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
        self.totals = totals

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

    @staticmethod
    def weighted(loss_B: torch.Tensor, terms: dict[str, torch.Tensor], weight_B: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss and its terms with each group weighted (0: the group does not count)."""
        return loss_B * weight_B, {k: v * weight_B for k, v in terms.items()}


def step_loss(model: torch.nn.Module, batch: Batch, cfg: TrainConfig, device: torch.device,
              packed: Packed | None = None, totals: StepTotals | None = None) -> StepOut:
    """Per-group loss [B], its terms, and diagnostics, for one rank's share of a step."""
    tok_NT, values_NT = forward(model, batch, device, packed, cfg.logprob_chunk_tokens)
    return cfg.configured.loss(StepTensors(batch, tok_NT, values_NT, device, totals))


def learner_model(lm: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """The FSDP root for ``cfg``: the log-prob wrapper, with a value head if the objective
    trains a critic."""
    return CausalLMLogpsValues(lm) if cfg.configured.needs.value_head else CausalLMLogps(lm)
