"""A prompt far longer than the context is decided on before it is tokenized whole."""

import pytest

from grao_pipe.config import GenerateConfig
from grao_pipe.generation import prepare_requests
from grao_pipe.generation.tokenizer import PolicyTokenizer
from grao_pipe.prompts import Prompt


@pytest.mark.parametrize("mode", ["skip", "truncate"])
def test_an_overlong_prompt_is_never_tokenized_whole(tiny_model_dir, mode):
    tok = PolicyTokenizer(tiny_model_dir)
    encoded: list[int] = []
    encode = tok.encode
    tok.encode = lambda text: (encoded.append(len(text)), encode(text))[1]  # type: ignore[method-assign]
    cfg = GenerateConfig(max_new_tokens=3, overlong_prompt=mode)
    huge = "1+1= " * 40_000  # 200 kB
    short = Prompt(1, "1+2=", None, "3")
    requests, skipped, truncated = prepare_requests(cfg, tok, [Prompt(0, huge, None, "2"), short])
    limit = tok.context - cfg.max_new_tokens
    assert max(encoded) <= 2 * limit * tok.max_token_chars < len(huge) // 10
    if mode == "skip":
        assert (skipped, truncated) == (1, 0) and [r.prompt for r in requests] == [short]
    else:  # the same tokens as truncating the whole prompt's tokens
        assert (skipped, truncated) == (0, 1)
        assert requests[0].token_ids == encode(huge)[-limit:]
