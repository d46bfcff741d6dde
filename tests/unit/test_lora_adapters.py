"""LoRA in the learner, in one process: at init (B = 0) the policy is the base exactly; only
adapter (and value-head) parameters get gradients; adapters reload from PEFT's format; the
config, the vLLM mapping and the train key know about adapters."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from grao_pipe.config import LoraConfig, TrainConfig, load_config  # noqa: E402
from grao_pipe.errors import ConfigError  # noqa: E402
from grao_pipe.learner import lora  # noqa: E402
from grao_pipe.learner.data import Group, collate, pack  # noqa: E402
from grao_pipe.learner.logprobs import CausalLMLogps, CausalLMLogpsValues  # noqa: E402
from grao_pipe.learner.step import step_loss, token_logps  # noqa: E402
from grao_pipe.learner.train_mode import prepare_for_training  # noqa: E402
from grao_pipe.sections import keyed  # noqa: E402

CPU = torch.device("cpu")
V = 50


def _groups(seed=0):
    g = torch.Generator().manual_seed(seed)

    def toks(n):
        return torch.randint(1, V, (n,), generator=g).tolist()

    return [Group(f"g{k}", toks(3 + k), toks(2 + 2 * k), 0.7, None,
                  responses=[toks(1 + (k + j) % 5) for j in range(3)], advantages=[0.5, -0.25, 1.0],
                  rewards=[1.0, 0.0, -1.0], behaviour=[None] * 3, ref=[None] * 3) for k in range(3)]


def _lm(seed=0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True)
    return Qwen2ForCausalLM(cfg)


@pytest.mark.parametrize("packed", [False, True])
def test_at_init_loss_and_logps_equal_the_base(packed):
    batch = collate(_groups(), pad_id=0)
    pk = pack(batch, 64, 0) if packed else None
    cfg = TrainConfig(logprob_chunk_tokens=4)
    base = CausalLMLogps(prepare_for_training(_lm(), activation_checkpointing=False))
    adapted = CausalLMLogps(lora.apply(prepare_for_training(_lm(), activation_checkpointing=True), LoraConfig(r=4)))
    assert torch.equal(token_logps(adapted, batch, CPU, pk, 4), token_logps(base, batch, CPU, pk, 4))
    assert torch.equal(step_loss(adapted, batch, cfg, CPU, pk)[0], step_loss(base, batch, cfg, CPU, pk)[0])


@pytest.mark.parametrize("targets", ["all-linear", ("q_proj", "v_proj")])
def test_gradients_reach_only_the_adapters_and_the_value_head(targets):
    lm = lora.apply(prepare_for_training(_lm(), activation_checkpointing=True), LoraConfig(r=4, target_modules=targets))
    model = CausalLMLogpsValues(lm)  # PPO: the critic trains with the adapters
    cfg = TrainConfig(objective="ppo", ppo={"kl": 0.0}, logprob_chunk_tokens=4)
    batch = collate(_groups(), pad_id=0)
    batch.behaviour_known_N[:] = True  # PPO's ratio against stored behaviour log-probs (here: zeros)
    step_loss(model, batch, cfg, CPU)[0].sum().backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    adapters = {n for n, _ in model.named_parameters() if lora.is_adapter_param(n)}
    assert got == adapters | {"value_head.weight", "value_head.bias"}
    # B starts at zero, so A's gradient is zero at init; B's is not (the update starts there).
    assert any(float(p.grad.abs().sum()) > 0 for n, p in model.named_parameters() if ".lora_B." in n)
    wanted = {"all-linear": 7, ("q_proj", "v_proj"): 2}[targets] * 2 * 2  # modules x layers x (A, B)
    assert len(adapters) == wanted
    assert {id(p) for p in lora.trainable(model)} == {id(p) for n, p in model.named_parameters() if n in got}


def test_adapter_export_reloads_with_peft_and_into_the_learner(tmp_path):
    """The learner's adapter written by ``lora.export`` loads with ``PeftModel.from_pretrained``
    (same log-probs as the merged export) and back into a learner (round r+1 continues it)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = tmp_path / "base"
    _lm().save_pretrained(base_dir)
    cfg = TrainConfig(lora=LoraConfig(r=4, alpha=8), export="both")
    assert cfg.lora is not None
    lm = lora.apply(AutoModelForCausalLM.from_pretrained(base_dir), cfg.lora)
    with torch.no_grad():  # a trained adapter: B != 0
        for n, p in lm.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.1)

    class _Tok:
        def save_pretrained(self, d):
            (d / "tokenizer_config.json").write_text("{}")

    lora.export(dict(lm.state_dict()), base_dir, cfg, torch.float32, tmp_path, _Tok())
    adapter = tmp_path / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    ids = torch.randint(1, V, (2, 9), generator=torch.Generator().manual_seed(3))
    want = lm(ids).logits
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter)).eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    assert torch.allclose(peft_model(ids).logits, want, atol=1e-5)
    assert torch.allclose(merged(ids).logits, want, atol=1e-5)

    again = lora.apply(AutoModelForCausalLM.from_pretrained(base_dir), cfg.lora, adapter)
    assert torch.equal(again(ids).logits, want)
    with pytest.raises(ValueError, match=r"rank 4.*asks for rank 8"):
        lora.apply(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=8, alpha=8), adapter)
    with pytest.raises(ValueError, match=r"do not match train\.lora.s modules"):
        lora.apply(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, alpha=8, target_modules=("q_proj",)),
                   adapter)


def test_lora_config_from_overrides_and_the_train_key():
    on = load_config(None, ["train.lora.r=8", "train.lora.target_modules=[q_proj,v_proj]", "train.export=adapter"])
    assert on.train.lora == LoraConfig(r=8, target_modules=("q_proj", "v_proj")) and on.train.export == "adapter"
    off = load_config(None, [])
    assert off.train.lora is None and off.train.export == "merged"
    # A different rank is a different model: the LoRA config is part of the train key.
    assert keyed(on.train) != keyed(load_config(None, ["train.lora.r=16", "train.export=adapter",
                                                        "train.lora.target_modules=[q_proj,v_proj]"]).train)
    assert keyed(on.train)["lora"]["r"] == 8
    with pytest.raises(ConfigError, match=r"train\.export=adapter exports a LoRA adapter: it needs train\.lora"):
        load_config(None, ["train.export=adapter"])
    with pytest.raises(ConfigError, match="lm_head is not supported"):
        load_config(None, ["train.lora.target_modules=[lm_head]"])
    with pytest.raises(ConfigError, match=r"unknown config key .train\.lora\.rank."):
        load_config(None, ["train.lora.rank=8"])


def test_targets_that_match_nothing_are_refused():
    with pytest.raises(ValueError):  # peft names the missing modules; the learner fails before training
        lora.apply(_lm(), LoraConfig(target_modules=("no_such_proj",)))


def test_an_adapter_directory_as_a_model_location_is_base_plus_adapter(tmp_path):
    """eval.model (or any model location) may name a PEFT adapter directory: it is the round-1
    base plus that adapter, digested by both."""
    from grao_pipe.errors import DataError
    from grao_pipe.models import adapter_digest, lora_policy_digest
    from grao_pipe.pipeline import Pipeline

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    p = Pipeline(load_config(None, [f"workdir={tmp_path / 'work'}", f"eval.model={adapter}"]))
    policy = p.model_at(str(adapter))
    assert policy.base == p.policy(1) and policy.get_adapter is not None and policy.get_adapter() == adapter
    assert policy.digest == lora_policy_digest(p.policy(1).digest, adapter_digest(adapter))
    with pytest.raises(DataError, match="without a merged model"):
        policy.local_dir()
    (adapter / "adapter_model.safetensors").write_bytes(b"other weights")
    assert p.model_at(str(adapter)).digest != policy.digest
