"""Per-token log-probs of chosen next tokens without materialising [tokens, vocab] logits.

The learner needs log πθ(x_{t+1} | x_≤t) only at the positions its losses read (continuation
tokens). For Qwen2.5 (V = 151936) the full fp32 logits of a 16k-token micro-batch are ~10 GB,
and autograd would keep them (and the log-softmax) alive until backward. Here the final hidden
states are computed once, and the LM head + log-softmax + gather run over chunks of tokens
inside one autograd Function that saves only the hidden states and one logsumexp per token,
recomputing each chunk's logits in backward.

``CausalLMLogps`` wraps a Hugging Face causal LM so that this head runs inside the module's
forward: it is the FSDP root, so root-managed parameters (embeddings, final norm, LM head) are
unsharded by FSDP's pre-forward hook exactly when they are used. It registers the LM's own
``model`` and ``lm_head`` submodules under the same names, so state-dict keys (checkpoints, the
HF export) are those of the causal LM itself.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Config attributes that make a model's logits differ from lm_head(hidden).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class _ChunkedHeadLogps(torch.autograd.Function):
    """logps_K = log_softmax(hidden_KH @ weight_VHᵀ)[k, targets_K[k]], ``chunk`` rows at a time.

    Saves hidden, weight, targets and logsumexp_K (4 bytes a token); backward recomputes each
    chunk's logits: d logp / d logits = onehot(target) − softmax.
    """

    @staticmethod
    def forward(ctx: Any, hidden_KH: torch.Tensor, weight_VH: torch.Tensor, targets_K: torch.Tensor,
                chunk: int, compute_dtype: torch.dtype) -> torch.Tensor:
        k = hidden_KH.shape[0]
        out_K = torch.empty(k, dtype=torch.float32, device=hidden_KH.device)
        lse_K = torch.empty_like(out_K)
        with torch.autocast(hidden_KH.device.type, enabled=False):
            w = weight_VH.to(compute_dtype)
            for s in range(0, k, chunk):
                logits = (hidden_KH[s : s + chunk].to(compute_dtype) @ w.T).float()
                target = logits.gather(-1, targets_K[s : s + chunk, None])[:, 0]
                # logsumexp in place: one fp32 [chunk, V] buffer at a time.
                top = logits.amax(-1, keepdim=True)
                lse = logits.sub_(top).exp_().sum(-1).log_().add_(top[:, 0])
                out_K[s : s + chunk] = target - lse
                lse_K[s : s + chunk] = lse
        ctx.save_for_backward(hidden_KH, weight_VH, targets_K, lse_K)
        ctx.chunk, ctx.compute_dtype = chunk, compute_dtype
        return out_K

    @staticmethod
    def backward(ctx: Any, grad_K: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden_KH, weight_VH, targets_K, lse_K = ctx.saved_tensors
        chunk, cd = ctx.chunk, ctx.compute_dtype
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden_KH) if need_h else None
        # Chunks' weight gradients are summed in fp32 (one matmul would accumulate in fp32 too).
        grad_w = torch.zeros(weight_VH.shape, dtype=torch.float32, device=weight_VH.device) if need_w else None
        grad_K = grad_K.float()
        with torch.autocast(hidden_KH.device.type, enabled=False):
            w = weight_VH.to(cd)
            for s in range(0, hidden_KH.shape[0], chunk):
                h = hidden_KH[s : s + chunk].to(cd)
                g = grad_K[s : s + chunk, None]
                # softmax from the saved logsumexp, then −g·softmax + g·onehot(target), in place.
                d_logits = (h @ w.T).float().sub_(lse_K[s : s + chunk, None]).exp_().mul_(-g)
                d_logits.scatter_add_(-1, targets_K[s : s + chunk, None], g)
                d_logits_c = d_logits.to(cd)
                del d_logits
                if grad_h is not None:
                    grad_h[s : s + chunk] = d_logits_c @ w
                if grad_w is not None:
                    if d_logits_c.dtype == grad_w.dtype:
                        grad_w.addmm_(d_logits_c.T, h)
                    else:
                        grad_w += d_logits_c.T @ h
        return grad_h, grad_w.to(weight_VH.dtype) if grad_w is not None else None, None, None, None


def chunked_token_logps(hidden_KH: torch.Tensor, weight_VH: torch.Tensor, targets_K: torch.Tensor,
                        chunk: int) -> torch.Tensor:
    """log_softmax(hidden_KH @ weight_VHᵀ) at ``targets_K``, fp32 [K], ``chunk`` tokens at a time.

    The matmuls run in the autocast dtype when autocast is on (as ``lm_head`` would), otherwise
    in the weight's dtype; the log-softmax is always fp32.
    """
    dev = hidden_KH.device.type
    cd = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else weight_VH.dtype
    out: torch.Tensor = _ChunkedHeadLogps.apply(hidden_KH, weight_VH, targets_K, max(chunk, 1), cd)
    return out


def full_token_logps(logits_KV: torch.Tensor, targets_K: torch.Tensor) -> torch.Tensor:
    """The unchunked reference: fp32 log-softmax over materialised logits, gathered [K]."""
    return torch.log_softmax(logits_KV.float(), dim=-1).gather(-1, targets_K[:, None])[:, 0]


class CausalLMLogps(nn.Module):
    """A causal LM whose forward returns log πθ of chosen next tokens (the FSDP root).

    ``forward(input_ids_RT, rows_K, cols_K, ...)`` scores token ``input_ids_RT[r, c + 1]`` at
    each position (r, c), so only the positions a loss reads pay for the vocabulary projection.
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        backbone, head = getattr(lm, "model", None), getattr(lm, "lm_head", None)
        if not isinstance(backbone, nn.Module) or not isinstance(head, nn.Linear):
            raise TypeError(f"{type(lm).__name__}: expected a causal LM with .model and a linear .lm_head "
                            "(Llama/Qwen style)")
        self.config = lm.config
        for name in _LOGIT_TRANSFORMS:  # the head below computes plain lm_head(hidden)
            if getattr(self.config, name, None) not in (None, 1, 1.0):
                raise TypeError(f"{type(lm).__name__}: config.{name} transforms the logits; not supported")
        # Same attribute names as the causal LM: state-dict keys stay `model.*` and `lm_head.*`.
        self.model = backbone
        self.lm_head = head

    def forward(self, input_ids_RT: torch.Tensor, rows_K: torch.Tensor, cols_K: torch.Tensor,
                attention_mask: Any = None, position_ids_RT: torch.Tensor | None = None,
                chunk_tokens: int = 0) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids_RT, attention_mask=attention_mask, position_ids=position_ids_RT,
                            use_cache=False).last_hidden_state
        hidden_KH = hidden[rows_K, cols_K]
        return self._head_logps(hidden_KH, input_ids_RT[rows_K, cols_K + 1], chunk_tokens)

    def _head_logps(self, hidden_KH: torch.Tensor, targets_K: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
        if chunk_tokens > 0 and self.lm_head.bias is None:
            return chunked_token_logps(hidden_KH, self.lm_head.weight, targets_K, chunk_tokens)
        return full_token_logps(self.lm_head(hidden_KH), targets_K)


def as_logps_model(model: nn.Module) -> nn.Module:
    """``model`` if it already returns log-probs (possibly FSDP-wrapped), else a wrapper around it."""
    return model if isinstance(model, CausalLMLogps) else CausalLMLogps(model)


class CausalLMLogpsValues(CausalLMLogps):
    """``CausalLMLogps`` plus PPO's critic: a linear value head on the backbone's final hidden
    state, so ``forward`` returns (log πθ, V) at the same positions: V(r, c) is the value of the
    state that precedes token ``input_ids_RT[r, c + 1]``.

    The head is a submodule of this FSDP root (sharded and checkpointed with it); it is not part
    of the causal LM, so the Hugging Face export leaves it out (``policy_state_dict``). It starts
    at zero (V = 0 everywhere), and a new train stage (the next round) starts a fresh one.
    """

    def __init__(self, lm: nn.Module):
        super().__init__(lm)
        hidden = int(self.lm_head.weight.shape[1])  # the backbone's final hidden size
        self.value_head = nn.Linear(hidden, 1, device=self.lm_head.weight.device, dtype=torch.float32)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids_RT: torch.Tensor, rows_K: torch.Tensor, cols_K: torch.Tensor,  # type: ignore[override]
                attention_mask: Any = None, position_ids_RT: torch.Tensor | None = None,
                chunk_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model(input_ids=input_ids_RT, attention_mask=attention_mask, position_ids=position_ids_RT,
                            use_cache=False).last_hidden_state
        hidden_KH = hidden[rows_K, cols_K]
        values_K = self.value_head(hidden_KH.to(self.value_head.weight.dtype))[:, 0].float()
        return self._head_logps(hidden_KH, input_ids_RT[rows_K, cols_K + 1], chunk_tokens), values_K


# Learner-only parameters: in checkpoints, never in the exported policy.
LEARNER_ONLY_PREFIXES = ("value_head.",)


def policy_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """The causal LM's own entries of a learner state dict (what the HF export holds)."""
    return {k: v for k, v in state.items() if not k.startswith(LEARNER_ONLY_PREFIXES)}
