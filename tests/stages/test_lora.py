"""LoRA through the train stage (torchrun, FSDP2, gloo): 2 ranks equal 1; the first step's loss
is the base model's; checkpoints hold only the adapters and the critic; the adapter export
reloads with PEFT and equals the merged export; a LoRA round generates, evaluates and trains
round 2 from the adapter."""

import json

import pytest
from stage_runner import run_stage

from grao_pipe.config import load_config
from grao_pipe.pipeline import Pipeline

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

SUMS = {"data": {"prompts": "builtin:sums_train"},
        "score": {"reference_logprobs": True,
                  "scorers": [{"kind": "function", "name": "sums", "function": "grao_pipe.tasks.sums:score"}]}}
LORA = ["train.lora.r=4", "train.lora.alpha=8"]


def _metrics(out):
    return [json.loads(x) for x in (out.target.dir.path / "metrics.jsonl").read_text().splitlines()]


def test_lora_two_ranks_equal_one_and_start_at_the_base(tiny_config):
    # Packed rows, activation checkpointing, a chunked head and gradient accumulation at once.
    common = ["train.activation_checkpointing=true", "train.pack_tokens=64", "train.logprob_chunk_tokens=2",
              "train.micro_batch_tokens=40", "train.lr=1e-2"]
    two = load_config(tiny_config(), [*common, *LORA, "train.export=both"])
    run_stage("generate", two)
    run_stage("score", two)
    out = run_stage("train", two)
    d = out.target.dir.path
    one = run_stage("train", load_config(tiny_config(), [*common, *LORA, "train.export=both", "train.nproc=1"]))
    full = run_stage("train", load_config(tiny_config(), common))
    lora2, lora1, full2 = _metrics(out), _metrics(one), _metrics(full)
    assert [m["loss"] for m in lora2] == pytest.approx([m["loss"] for m in lora1], abs=1e-5)
    assert lora2[0]["loss"] == pytest.approx(full2[0]["loss"], abs=1e-6)  # B = 0: the base's loss
    assert lora2[-1]["loss"] != pytest.approx(full2[-1]["loss"], abs=1e-6)  # then they part

    # Both exports listed by digest; the adapter (PEFT) and the merged model give one policy.
    names = {s.name for s in out.manifest.shards}
    assert names == {"model", "adapter"}
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = Pipeline(two).policy(1).local_dir()
    with torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(d / "model").eval()
        ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
        merged = model(ids).logits
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(d / "adapter")).eval()
        adapted, base = peft(ids).logits, AutoModelForCausalLM.from_pretrained(base_dir).eval()(ids).logits
    assert torch.allclose(adapted.log_softmax(-1), merged.log_softmax(-1), atol=1e-5)
    assert not torch.allclose(adapted, base, atol=1e-4)  # the adapter learned something


def test_a_lora_round_generates_evaluates_and_trains_from_the_adapter(tiny_config):
    """train.export=adapter: no merged model anywhere; round 2 samples from base + adapter, eval
    reads the adapter, and round 2's learner continues round 1's adapter on the round-1 base.
    PPO: its critic trains with the adapters."""
    cfg = load_config(tiny_config(run={"rounds": 2}, eval={"limit": 4}, **SUMS),
                      [*LORA, "train.objective=ppo", "train.export=adapter", "train.lr=1e-2",
                       "train.keep_checkpoints=true"])
    for stage in ("generate", "score", "train"):
        run_stage(stage, cfg)
    p = Pipeline(cfg)
    r1 = p.target("train", 1).dir.path
    assert (r1 / "adapter" / "adapter_model.safetensors").is_file() and not (r1 / "model").exists()
    policy = p.policy(2)
    assert policy.get_dir is None and policy.base is not None and policy.digest != p.policy(1).digest
    gen2 = run_stage("generate", cfg, round_=2)
    rows = gen2.target.dir.read_table(gen2.manifest, ["policy_digest", "behaviour_logprobs"])
    assert set(rows["policy_digest"].to_pylist()) == {policy.digest}
    from grao_pipe.datasets import card

    assert card(gen2.target.dir, gen2.manifest)["lineage"]["lora_base_digest"] == p.policy(1).digest
    (train1,) = [r for r in Pipeline(cfg).status() if r.stage == "train" and r.round == 1]
    assert train1.state == "done" and "LoRA r=4 (adapter)" in train1.detail
    ev = run_stage("eval", cfg, round_=1)
    assert ev.manifest.stats.n_prompts == 4 and ev.manifest.inputs.model == policy.digest
    # The checkpoint is the trainable state only: adapters, critic (and their optimizer state).
    from torch.distributed.checkpoint import FileSystemReader

    (ckpt,) = (r1 / "checkpoints").glob("step-*")
    saved = FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    weights = {k for k in saved if k.startswith("model.")}
    assert "model.value_head.weight" in weights
    assert all(".lora_" in k or k.startswith("model.value_head.") for k in weights)
    assert any(k.startswith("optim.state.") and ".lora_B." in k for k in saved)

    run_stage("score", cfg, round_=2)
    out2 = run_stage("train", cfg, round_=2)
    spec = json.loads((out2.target.dir.path / "spec.json").read_text())
    assert spec["adapter_dir"] == str(r1 / "adapter") and spec["model_dir"] == str(p.policy(1).local_dir())
    # The learner starts where the sampler was: base + round 1's adapter (behaviour log-probs
    # from the hf sampler, which merged the same adapter), so the first step is on-policy.
    assert _metrics(out2)[0]["staleness_kl"] == pytest.approx(0.0, abs=1e-5)
