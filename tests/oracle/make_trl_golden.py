"""Write tests/data/trl_golden.json: TRL's DPO (loss_type="sigmoid") and GRPO (loss_type="grpo")
losses and gradients, and TRL's group advantages, on fixed ragged float64 inputs.

Run by hand where TRL is importable (the default suite never imports TRL):

    python tests/oracle/make_trl_golden.py [--out tests/data/trl_golden.json]

TRL is the oracle, called through its own code: ``DPOTrainer._compute_loss`` and
``GRPOTrainer._compute_loss`` on a minimal stand-in for the trainer (the attributes those methods
read) and a stand-in model whose per-token log-probs are the fixed inputs (leaf tensors, so the
gradients are d loss / d log π per token), and ``trl.trainer.utils.nanstd`` for the advantages.
tests/unit/test_trl_golden.py compares our losses with the file at 1e-12.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "trl_golden.json"


class _Accelerator:
    device = torch.device("cpu")
    num_processes = 1
    sync_gradients = True

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return x

    gather_for_metrics = gather

    def reduce(self, x: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return x


def _metrics() -> Any:
    return defaultdict(lambda: defaultdict(list))


def _ragged(gen: torch.Generator, rows: int, width: int, lengths: list[int], scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs [rows, width] (negative) and a right-padded mask of ``lengths``."""
    logps = -scale * torch.rand(rows, width, generator=gen) - 0.05
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).to(torch.float64)
    return logps * mask, mask


def dpo_case(beta: float = 0.1) -> dict[str, Any]:
    from trl.trainer.dpo_trainer import DPOTrainer

    gen = torch.Generator().manual_seed(1)
    n_pairs, width = 3, 6
    lengths = [6, 2, 4, 3, 5, 1]  # chosen rows 0..2, rejected rows 3..5
    policy, mask = _ragged(gen, 2 * n_pairs, width, lengths)
    ref, _ = _ragged(gen, 2 * n_pairs, width, lengths)
    leaf = policy.clone().requires_grad_(True)
    # TRL's batch: [chosen; rejected] rows of prompt + completion; the model returns per-token
    # log-probs of the shifted labels (0 where the label is -100, as its fused LM head does).
    prompt_len = 2
    total = prompt_len + width + 1
    completion_mask = torch.zeros(2 * n_pairs, total, dtype=torch.long)
    completion_mask[:, prompt_len + 1 :] = mask.long()

    class Model(torch.nn.Module):
        training = True

        def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, **_: Any) -> Any:
            shifted = (labels[:, 1:] != -100).to(torch.float64)
            lp = torch.zeros(shifted.shape, dtype=torch.float64)
            lp = lp + torch.nn.functional.pad(leaf, (shifted.shape[1] - width, 0))
            zeros = torch.zeros_like(shifted)
            return SimpleNamespace(log_probs=lp * shifted, entropy=zeros, mean_logits=zeros,
                                   is_top1=torch.zeros_like(shifted, dtype=torch.bool))

    ref_sum = (ref * mask).sum(1)
    inputs = {"input_ids": torch.ones(2 * n_pairs, total, dtype=torch.long),
              "attention_mask": torch.ones(2 * n_pairs, total, dtype=torch.long), "completion_mask": completion_mask,
              "ref_chosen_logps": ref_sum[:n_pairs], "ref_rejected_logps": ref_sum[n_pairs:]}
    model = Model()
    trainer = SimpleNamespace(model=model, accelerator=_Accelerator(), aux_loss_enabled=False, ld_alpha=None,
                              precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=["sigmoid"],
                              loss_weights=[1.0], beta=beta, use_weighting=False, _metrics=_metrics(),
                              _total_train_tokens=0, _tp_size=1)
    loss = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    loss.backward()
    return {"beta": beta, "n_pairs": n_pairs, "policy_logps": policy.tolist(), "ref_logps": ref.tolist(),
            "mask": mask.tolist(), "loss": loss.item(), "grad": leaf.grad.tolist()}


def grpo_case(beta: float, bias_correction_kl: bool, clip: float = 0.2) -> dict[str, Any]:
    from trl.trainer.grpo_trainer import GRPOTrainer

    gen = torch.Generator().manual_seed(2)
    n_groups, g, width = 2, 4, 5
    lengths = [5, 1, 3, 4, 2, 5, 3, 1]
    policy, mask = _ragged(gen, n_groups * g, width, lengths)
    # Behaviour (old) log-probs near the policy's, some ratios outside 1 ± clip.
    old = (policy + 0.4 * (torch.rand(policy.shape, generator=gen) - 0.5)) * mask
    ref = (policy + 0.6 * (torch.rand(policy.shape, generator=gen) - 0.5)) * mask
    advantages = torch.tensor([1.2, -0.4, -0.8, 0.0, 0.9, -1.5, 0.3, 0.3])
    leaf = policy.clone().requires_grad_(True)

    def per_token_logps(*_: Any, **__: Any) -> tuple[torch.Tensor, torch.Tensor, None]:
        return leaf, torch.zeros_like(leaf), None

    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=per_token_logps, top_entropy_quantile=1.0, aux_loss_enabled=False,
        off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta, loss_type="grpo",
        epsilon_low=clip, epsilon_high=clip, use_vllm=False, vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False,
        accelerator=_Accelerator(), _metrics=_metrics(),
        args=SimpleNamespace(use_bias_correction_kl=bias_correction_kl, delta=None))
    inputs = {"prompt_ids": torch.ones(n_groups * g, 2, dtype=torch.long),
              "prompt_mask": torch.ones(n_groups * g, 2, dtype=torch.long),
              "completion_ids": torch.ones(n_groups * g, width, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref}
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    loss.backward()
    return {"beta": beta, "clip": clip, "bias_correction_kl": bias_correction_kl, "group_size": g,
            "policy_logps": policy.tolist(), "old_logps": old.tolist(), "ref_logps": ref.tolist(), "mask": mask.tolist(),
            "advantages": advantages.tolist(), "loss": loss.item(), "grad": leaf.grad.tolist()}


def advantage_case() -> dict[str, Any]:
    """TRL's group-normalised advantages (scale_rewards="group"): (r − mean) / (nanstd + 1e-4)."""
    from trl.trainer.utils import nanstd

    g = 8
    rewards = torch.tensor([1.0, 0.0, -1.0, 1.0, 1.0, 0.0, 0.5, -0.5,
                            0.2, 0.9, -0.3, 0.0, 0.4, 0.4, -1.0, 0.7])
    grouped = rewards.view(-1, g)
    std = nanstd(grouped, dim=1).repeat_interleave(g)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(g)
    return {"group_size": g, "rewards": rewards.tolist(), "advantages": ((rewards - mean) / (std + 1e-4)).tolist()}


def make() -> dict[str, Any]:
    import trl

    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # every tensor of the cases, TRL's own included
    try:
        return {"trl_version": trl.__version__, "torch_version": torch.__version__.split("+")[0],
                "dpo": dpo_case(),
                "grpo": [grpo_case(0.0, False), grpo_case(0.04, False), grpo_case(0.04, True),
                         grpo_case(0.04, False, clip=10.0)],
                "advantages": advantage_case()}
    finally:
        torch.set_default_dtype(before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=GOLDEN)
    a = ap.parse_args()
    a.out.write_text(json.dumps(make(), indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
