"""transformers backend: batched sampling on CPU or GPU (the embedded default)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from grao_pipe.config import GenerateConfig
from grao_pipe.generation import Request, Sample
from grao_pipe.generation.tokenizer import PolicyTokenizer


class BehaviourLogps:
    """log πθ(sampled token) under the raw (temperature-1) policy, gathered step by step.

    A forward hook keeps only the latest forward's raw next-token logits (exactly what
    ``output_logits=True`` returns) as a log-softmax; this object, passed to ``generate`` as a
    logits processor (it leaves the scores unchanged), is called once per step right after that
    forward with the sequence so far: its last token is the previous step's sample, which is
    gathered from the previous step's log-softmax. The last step's token is gathered from the
    returned sequences (``finish``). So two [N, V] are alive at most, never [steps, N, V].
    Use: ``with rec.attached(model): out = model.generate(..., logits_processor=[rec])``.
    """

    def __init__(self) -> None:
        self._latest: Any = None  # [N, V] log-softmax of the latest forward
        self._prompt_len: int | None = None
        self._step: tuple[int, Any] | None = None  # (step index, its [N, V]) awaiting its token
        self.steps: list[Any] = []  # [N] per generated step, in order

    def _on_forward(self, _module: Any, _args: Any, output: Any) -> None:
        import torch

        self._latest = torch.log_softmax(output.logits[:, -1].to(dtype=torch.float32, copy=True), dim=-1)

    def _gather(self, step: int, tokens: Any) -> None:
        if step != len(self.steps):
            raise RuntimeError(f"hf sampler: behaviour log-prob of step {step} after {len(self.steps)} steps")
        assert self._step is not None
        lsm = self._step[1]
        self.steps.append(lsm.gather(1, tokens.to(lsm.device)[:, None])[:, 0])

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self._prompt_len is None:
            self._prompt_len = int(input_ids.shape[1])
        step = int(input_ids.shape[1]) - self._prompt_len  # the step whose token is sampled next
        if self._step is not None:
            self._gather(self._step[0], input_ids[:, self._prompt_len + self._step[0]])
        self._step = (step, self._latest)
        self._latest = None
        return scores

    def finish(self, sequences: Any) -> Any:
        """[N, new tokens] behaviour log-probs, given ``generate``'s output sequences."""
        import torch

        if self._prompt_len is None:
            raise RuntimeError("hf sampler: generate() never called the behaviour log-prob recorder")
        new = sequences.shape[1] - self._prompt_len
        if self._step is not None and self._step[0] < new:  # the last kept step's token
            self._gather(self._step[0], sequences[:, self._prompt_len + self._step[0]])
        self._step = None
        if len(self.steps) != new:
            raise RuntimeError(f"hf sampler: {len(self.steps)} behaviour log-prob steps for {new} new tokens")
        return torch.stack(self.steps, dim=1) if self.steps else torch.zeros(sequences.shape[0], 0)

    @contextlib.contextmanager
    def attached(self, model: Any) -> Iterator[BehaviourLogps]:
        handle = model.register_forward_hook(self._on_forward)
        try:
            yield self
        finally:
            handle.remove()
            self._latest = None


class HFSampler:
    name = "hf"

    def __init__(self, model_dir: Path, cfg: GenerateConfig, tok: PolicyTokenizer, trust_remote_code: bool = False,
                 adapter_dir: Path | None = None):
        import torch

        from grao_pipe import hf

        self._torch = torch
        self.cfg = cfg
        self.tok = tok
        self.model = hf.load_model(model_dir, trust_remote_code=trust_remote_code, purpose="generate.backend=hf")
        if adapter_dir is not None:
            self.model = hf.merge_adapter(self.model, adapter_dir)
        self.device = self.model.device

    def sample(self, requests: list[Request], seed: int) -> list[list[Sample]]:
        """One generate() call for the batch, left-padded token ids, seeded once per call."""
        from grao_pipe import hf

        torch = self._torch
        g, pad = self.cfg.num_samples, self.tok.pad_id
        ids, attn = hf.pad([r.token_ids for r in requests], pad, side="left")
        width = ids.shape[1]
        torch.manual_seed(seed)
        # Behaviour log-probs are gathered per step (BehaviourLogps), so no step's full-vocabulary
        # logits outlive it; compile stays off because the hook must run eagerly.
        rec = BehaviourLogps()
        with torch.no_grad(), rec.attached(self.model):
            out = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=attn.to(self.device),
                do_sample=True, temperature=self.cfg.temperature, top_p=self.cfg.top_p, top_k=0,
                max_new_tokens=self.cfg.max_new_tokens, num_return_sequences=g,
                pad_token_id=pad, eos_token_id=self.tok.eos_id, logits_processor=[rec], disable_compile=True,
            )
        new = out[:, width:]
        lps = rec.finish(out)
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
