"""transformers backend: batched sampling on CPU or GPU (the embedded default)."""

from __future__ import annotations

from pathlib import Path

from grao_pipe.config import GenerateConfig
from grao_pipe.generation import Request, Sample
from grao_pipe.generation.tokenizer import PolicyTokenizer


class HFSampler:
    name = "hf"

    def __init__(self, model_dir: Path, cfg: GenerateConfig, tok: PolicyTokenizer, trust_remote_code: bool = False):
        import torch

        from grao_pipe import hf

        self._torch = torch
        self.cfg = cfg
        self.tok = tok
        self.model = hf.load_model(model_dir, trust_remote_code=trust_remote_code, purpose="generate.backend=hf")
        self.device = self.model.device

    def sample(self, requests: list[Request], seed: int) -> list[list[Sample]]:
        """One generate() call for the batch, left-padded token ids, seeded once per call."""
        from grao_pipe import hf

        torch = self._torch
        g, pad = self.cfg.num_samples, self.tok.pad_id
        ids, attn = hf.pad([r.token_ids for r in requests], pad, side="left")
        width = ids.shape[1]
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=attn.to(self.device),
                do_sample=True, temperature=self.cfg.temperature, top_p=self.cfg.top_p, top_k=0,
                max_new_tokens=self.cfg.max_new_tokens, num_return_sequences=g,
                return_dict_in_generate=True, output_logits=True, pad_token_id=pad,
                eos_token_id=self.tok.eos_id,
            )
        new = out.sequences[:, width:]
        # Behaviour log-probs of the sampled tokens under the raw (temperature-1) policy,
        # one step at a time so a large vocabulary never materialises as [N, T, V].
        lps = torch.stack(
            [torch.log_softmax(step.float(), dim=-1).gather(1, new[:, t : t + 1]).squeeze(1)
             for t, step in enumerate(out.logits)],
            dim=1,
        )
        new_l, lps_l = new.tolist(), lps.tolist()
        results: list[list[Sample]] = []
        for p in range(len(requests)):
            group = []
            for j in range(p * g, (p + 1) * g):
                toks = new_l[j]
                if self.tok.eos_id in toks:
                    cut, reason = toks.index(self.tok.eos_id) + 1, "stop"
                else:
                    cut, reason = len(toks), "length"
                group.append(Sample(self.tok.decode(toks[:cut]), toks[:cut], [float(x) for x in lps_l[j][:cut]],
                                    reason, seed))
            results.append(group)
        return results
