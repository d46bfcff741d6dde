"""The embedded default model: a tiny Qwen2-architecture causal LM with a locally trained
tokenizer. Built from config and a corpus, cached by content, never downloaded."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from grao_pipe.config import TinyModelConfig
from grao_pipe.errors import StorageFull, full_errno
from grao_pipe.hashing import digest
from grao_pipe.schemas import tmp_name
from grao_pipe.storage.shards import clean_temporaries

EOS = "<|endoftext|>"
UNK = "<unk>"
TOKENIZER_VOCAB = 128
# A minimal role-prefixed chat template, so chat-format prompts and OpenAI-compatible servers
# (which apply the tokenizer's template) work with the tiny model too.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def _train_tokenizer(corpus: Iterable[str]):  # -> PreTrainedTokenizerFast
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    # Digits split one by one (as Qwen2 does); whitespace kept as tokens so decode is lossless.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\d|\s+|[^\d\s]+"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB, special_tokens=[EOS, UNK], show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, unk_token=UNK)
    out.chat_template = CHAT_TEMPLATE
    return out


def tiny_model_key(cfg: TinyModelConfig, corpus: list[str]) -> str:
    """What the tiny model is a function of: its config, its tokenizer corpus and this builder.
    Cache keys use it as the model's digest, so computing a key never builds the model."""
    return digest({"tiny": cfg.model_dump(), "corpus": corpus, "v": 2})[:16]


def build_tiny_model(cfg: TinyModelConfig, corpus: list[str], cache_root: Path) -> Path:
    """Return the directory of the tiny model for (cfg, corpus), building it once."""
    out = cache_root / f"tiny-qwen2-{tiny_model_key(cfg, corpus)}"
    if (out / "config.json").is_file():
        return out

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from grao_pipe.extras import require
    from grao_pipe.hf import quiet

    require("the embedded tiny model (model.path: null)", "torch", "transformers")
    quiet()

    tokenizer = _train_tokenizer(corpus)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(config)
    cache_root.mkdir(parents=True, exist_ok=True)
    clean_temporaries(cache_root)  # a build killed or failed earlier
    tmp = out.with_name(tmp_name(out.name))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except Exception as e:  # a full disk surfaces as safetensors' own error, not an OSError
        shutil.rmtree(tmp, ignore_errors=True)
        if full_errno(e) is not None:
            raise StorageFull(f"{out}: cannot write the tiny model ({e}); free space and re-run") from None
        raise
    try:
        tmp.replace(out)  # atomic: a half-built model directory is never visible
    except OSError:
        if not (out / "config.json").is_file():
            raise
        shutil.rmtree(tmp)  # a concurrent process (another --shard worker) built it first
    return out
