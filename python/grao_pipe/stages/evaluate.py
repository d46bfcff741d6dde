"""``grao-pipe eval``: RAS and NAG (docs/objectives.md, Evaluation) of a round's trained model against the base model.

Both models answer the same held-out prompts (one sample each, seeded); a comparative scorer
gives R(o, y) against the reference for each answer. Output: ``<workdir>/eval/<key>/`` with
``eval.json`` (the metrics, also the manifest's stats) and every answer with its R in
``answers.jsonl`` and, keyed by a stable prompt id for pairing across runs (``grao-pipe
compare``), in ``answers.parquet``. Cached like any stage.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from grao_pipe import metrics, progress, scoring
from grao_pipe.errors import DataError
from grao_pipe.generation import make_sampler, prepare_requests
from grao_pipe.generation.tokenizer import PolicyTokenizer
from grao_pipe.hashing import digest
from grao_pipe.manifests import EvalManifest, EvalStats
from grao_pipe.prompts import group_id, load_prompt_set
from grao_pipe.scoring.base import ScoreInput
from grao_pipe.sections import keyed
from grao_pipe.stages.base import Edge, Outcome, Part, Stage, Target, Timer, Upstream
from grao_pipe.storage import content_sha256

if TYPE_CHECKING:
    from grao_pipe.pipeline import Pipeline, Policy
    from grao_pipe.prompts import Prompt


# answers.parquet: one row per eval prompt (None rewards: invalid scores).
ANSWERS_COLUMNS = (("prompt_id", "string"), ("prompt_index", "int64"), ("prompt", "string"), ("reference", "string"),
                   ("model", "string"), ("base", "string"), ("r_model", "float64"), ("r_base", "float64"))


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([(n, getattr(pa, t)()) for n, t in ANSWERS_COLUMNS])


def _mean(values: list[float | None]) -> float | None:
    valid = [v for v in values if v is not None]
    return sum(valid) / len(valid) if valid else None


def prompt_id(prompt: Prompt) -> str:
    """A prompt's stable id: its content (text or chat turns) and reference, not its position or
    the policy's rendering, so two runs' answers pair by what was asked."""
    asked = prompt.text if prompt.text is not None else json.dumps(prompt.messages)
    return group_id(asked, prompt.reference)


def _answers_parquet(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=_schema()), buf)
    return bytes(buf.getvalue().to_pybytes())


class Eval(Stage):
    name = "eval"
    code_version = 2  # 2: answers.parquet with prompt ids
    help = "RAS and NAG of a round's trained model vs the base model, with N and 95% intervals."
    in_run = False  # ``grao-pipe run`` adds it after the last round with run.eval=true
    upstream = (Edge("train", model=True),)  # the round's trained model (unless eval.model names one)

    def _models(self, p: Pipeline, up: Upstream) -> tuple[Policy, Policy]:
        ec = p.cfg.eval
        base = p.model_at(ec.base_model) if ec.base_model else p.base_policy()
        post = p.model_at(ec.model) if ec.model else up.model("train")
        return base, post

    def _prompts_location(self, p: Pipeline) -> str:
        return p.cfg.eval.prompts or p.cfg.data.prompts

    def target(self, p: Pipeline, up: Upstream) -> Target:
        ec = p.cfg.eval
        base, post = self._models(p, up)
        scorer = ec.scorer or p.cfg.score.scorers[0]
        data = keyed(p.cfg.data) | {"limit": ec.limit}
        inputs = {"prompts": {"sha256": content_sha256(p.input(self._prompts_location(p))), **data},
                  "scorer": scoring.scorer_key(scorer, p.scorer_files(scorer)), "base": base.digest, "model": post.digest}
        return self.make_target(p, up, {"eval": keyed(ec), "generate": keyed(p.cfg.generate)}, inputs)

    def _answers(self, p: Pipeline, policy: Policy, prompts: list[Prompt],
                 task: progress.Task) -> tuple[list[Any], list[str]]:
        ec = p.cfg.eval
        gen = p.cfg.generate.model_copy(update={"num_samples": 1, "temperature": ec.temperature, "backend": "hf",
                                                "max_new_tokens": ec.max_new_tokens or p.cfg.generate.max_new_tokens})
        tok = PolicyTokenizer(policy.tokenizer_dir(), p.cfg.model.trust_remote_code)
        # A LoRA export: its merged model/ if written, else the base with the adapter merged in.
        model, adapter = policy.for_backend("hf")
        sampler = make_sampler(gen, model, tok, p.cfg.model.trust_remote_code, adapter)
        requests, _, _ = prepare_requests(gen, tok, prompts)
        texts: list[str] = []
        for b in range(0, len(requests), ec.batch_size):
            batch = requests[b : b + ec.batch_size]
            groups = sampler.sample(batch, ec.seed + b)
            texts += [g[0].text for g in groups]
            task.advance(len(batch), tokens=sum(len(g[0].token_ids) for g in groups))
        task.advance(len(prompts) - len(requests))  # skipped as too long
        return requests, texts

    def _base_answers(self, p: Pipeline, base: Policy, prompts: list[Prompt], task: progress.Task) -> list[str]:
        """The base model's answers, cached by content: every eval of one base model on the same
        prompts with the same sampling (a compare's variants of one seed) reuses one set, which
        halves the eval time of a compare. A cache file that does not verify is recomputed."""
        ec = p.cfg.eval
        key = digest({"model": base.digest, "trust_remote_code": p.cfg.model.trust_remote_code,
                      "prompts": [[q.text, q.messages] for q in prompts], "sampling": keyed(p.cfg.generate),
                      "eval": {k: getattr(ec, k) for k in ("temperature", "max_new_tokens", "batch_size", "seed")}})
        cache = p.workdir.cache_dir("eval-base-answers", key[:16])
        path = cache.local_path("answers.json")
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
                texts = saved["texts"]
                if saved["key"] == key and saved["sha256"] == digest(texts) and len(texts) <= len(prompts):
                    task.advance(len(prompts))
                    return list(texts)
            except (OSError, ValueError, KeyError, TypeError):
                pass
            print(f"eval: {path} does not verify; answering again", file=sys.stderr)
        _, texts = self._answers(p, base, prompts, task)
        cache.write_file("answers.json", json.dumps({"key": key, "sha256": digest(texts), "texts": texts}).encode(),
                         publish=True)
        return texts

    def execute(self, p: Pipeline, target: Target, part: Part) -> Outcome:
        ec = p.cfg.eval
        timer = Timer()
        base, post = self._models(p, target.upstream)
        data = p.cfg.data.model_copy(update={"limit": ec.limit})
        if ec.prompts is None:  # an explicit, printed choice: a number on training prompts is not a result
            print(f"WARNING: eval.prompts is not set: evaluating on the training prompts ({p.cfg.data.prompts}), "
                  "which are not held out; set eval.prompts to a held-out prompt file", file=sys.stderr)
        prompts = load_prompt_set(p.input(self._prompts_location(p)), data).prompts
        scorer_cfg = ec.scorer or p.cfg.score.scorers[0]
        scorer = scoring.build(scorer_cfg, p.scorer_files(scorer_cfg))
        task = progress.task("eval", total=2 * len(prompts), unit="answers")
        requests, post_texts = self._answers(p, post, prompts, task)
        pre_texts = self._base_answers(p, base, prompts, task)
        task.finish()
        texts = [r.text for r in requests]
        refs = [r.prompt.reference for r in requests]
        messages = [[{"role": role, "content": c} for role, c in r.prompt.messages] if r.prompt.messages else None
                    for r in requests]
        res_post = scorer.score(ScoreInput.from_lists(texts, post_texts, refs, messages))
        res_pre = scorer.score(ScoreInput.from_lists(texts, pre_texts, refs, messages))
        r_post, r_pre = res_post.tolist(), res_pre.tolist()
        n_valid = sum(a is not None and b is not None for a, b in zip(r_post, r_pre, strict=True))
        if n_valid == 0:
            raise DataError(f"eval (round {target.round}): no prompt has a valid score for both models "
                            f"({len(requests)} prompts; unparseable judge answers {res_post.unparseable + res_pre.unparseable}, "
                            f"scorer errors {res_post.errors + res_pre.errors}); fix the scorer and re-run")
        invalid = sum(v is None for v in r_post) + sum(v is None for v in r_pre)
        share = invalid / max(2 * len(requests), 1)
        if share > p.cfg.score.max_invalid_share:  # the rule of score: a metric on a few rows is no result
            raise DataError(f"eval (round {target.round}): {invalid} of {2 * len(requests)} rewards are invalid "
                            f"({share:.0%}: unparseable judge answers {res_post.unparseable + res_pre.unparseable}, "
                            f"scorer errors {res_post.errors + res_pre.errors}), over score.max_invalid_share="
                            f"{p.cfg.score.max_invalid_share:g}; the metrics would rest on {n_valid} prompts. Fix the "
                            "scorer (judge model, template, endpoint) or raise the share")
        result = {
            "n_prompts": len(requests), "scorer": scorer_cfg.name, "held_out": ec.prompts is not None,
            "invalid": {"model": sum(v is None for v in r_post), "base": sum(v is None for v in r_pre)},
            "mean_reward": {"model": _mean(r_post), "base": _mean(r_pre)},
            "ras": {k: e.as_dict() for k, e in metrics.ras(r_post).items()},
            "ras_base": {k: e.as_dict() for k, e in metrics.ras(r_pre).items()},
            "nag": {k: e.as_dict() for k, e in metrics.nag(r_post, r_pre).items()},
        }
        rows = [{"prompt": q, "reference": y, "model": o, "base": b, "r_model": rp, "r_base": rb}
                for q, y, o, b, rp, rb in zip(texts, refs, post_texts, pre_texts, r_post, r_pre, strict=True)]
        target.dir.write_file("answers.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
        target.dir.write_file("answers.parquet", _answers_parquet(
            [{"prompt_id": prompt_id(r.prompt), "prompt_index": r.prompt.index, **row}
             for r, row in zip(requests, rows, strict=True)]))
        stats = EvalStats.model_validate({**result, "seconds": round(timer.seconds, 3)})
        # allow_nan=False: eval.json is strict JSON that any tool reads.
        target.dir.write_file("eval.json", json.dumps(stats.model_dump(), indent=2, allow_nan=False).encode())
        return Outcome(target, False, target.commit(EvalManifest, [], stats), timer.seconds)

    def size(self, m: object) -> str:
        assert isinstance(m, EvalManifest)
        return f"{m.stats.n_prompts} prompts"

    def report(self, o: Outcome, console: Console) -> None:
        super().report(o, console)
        if not isinstance(o.manifest, EvalManifest):
            return
        st = o.manifest.stats
        where = "" if st.held_out is not False else ", the TRAINING prompts: not held out"
        invalid = f"; invalid rewards: model {st.invalid['model']}, base {st.invalid['base']}" if st.invalid else ""
        table = Table(title=f"eval on {st.n_prompts} prompts{where} (scorer {st.scorer}{invalid})"
                            f"{' (cached)' if o.cached else ''}")
        for col in ("metric", "value", "95% CI", "N"):
            table.add_column(col, justify="right")
        for name, group in (("RAS", st.ras), ("RAS (base)", st.ras_base), ("NAG", st.nag)):
            for kind, e in group.items():
                table.add_row(f"{name} {kind}", f"{e.value:.3f}", f"[{e.low:.3f}, {e.high:.3f}]", str(e.n))
        console.print(table)
