"""Per-token log-probs of continuations under a frozen reference model (for DPO and GRPO's KL)."""

from __future__ import annotations

from pathlib import Path


class ReferenceModel:
    def __init__(self, model_dir: Path | str, batch_size: int = 16):
        import torch
        from transformers import AutoModelForCausalLM

        from grao_pipe._quiet import quiet_transformers

        quiet_transformers()
        self._torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model = model.to(self.device).eval()  # type: ignore[arg-type]
        self.batch_size = batch_size

    def token_logps(self, prompts: list[list[int]], continuations: list[list[int]]) -> list[list[float]]:
        """log π_ref(c_t | prompt, c_<t) for every continuation token, batched by length."""
        torch = self._torch
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(continuations[i]))
        out: list[list[float]] = [[] for _ in prompts]
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            seqs = [prompts[i] + continuations[i] for i in idx]
            width = max(len(s) for s in seqs)
            ids = torch.zeros(len(idx), width, dtype=torch.long)
            attn = torch.zeros_like(ids)
            for r, s in enumerate(seqs):
                ids[r, : len(s)] = torch.tensor(s)
                attn[r, : len(s)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=attn.to(self.device)).logits
                lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None].to(self.device))[..., 0]
            lp_l = lp.cpu().tolist()
            for r, i in enumerate(idx):
                p, c = len(prompts[i]), len(continuations[i])
                out[i] = lp_l[r][p - 1 : p - 1 + c]
        return out
