"""The reference model's per-token log-probs (chunked head) equal a plain full-vocabulary forward."""

import pytest

torch = pytest.importorskip("torch")

from grao_pipe.reference_model import ReferenceModel  # noqa: E402


def test_reference_logprobs_equal_a_full_forward(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    ref = ReferenceModel(tiny_model_dir, batch_size=2, chunk_tokens=3)  # several chunks, several batches
    prompts = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 4]]  # ids below the tiny vocabulary (14)
    conts = [[2, 3], [4, 1, 2], [3], [6, 7, 8]]
    got = ref.token_logps(prompts, conts)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    for p, c, lp in zip(prompts, conts, got, strict=True):
        ids = torch.tensor([p + c])
        with torch.no_grad():
            full = torch.log_softmax(model(ids).logits[0].float(), -1)
        want = [full[len(p) - 1 + t, c[t]].item() for t in range(len(c))]
        assert lp == pytest.approx(want, abs=1e-5)
