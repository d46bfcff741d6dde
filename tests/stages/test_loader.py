"""The learner's group store: memory-mapped Arrow copies of score shards, grouped exactly."""

import pyarrow.compute as pc
import pyarrow.parquet as pq
from stage_runner import run_stage

from grao_pipe.config import load_config
from grao_pipe.learner.data import GroupStore


def test_group_store_matches_the_shards(tiny_config, tmp_path):
    cfg = load_config(tiny_config(score={"advantage": {"degenerate": "drop"}}))
    run_stage("generate", cfg)
    out = run_stage("score", cfg)
    shards = [(out.target.dir.path / s.name, s.sha256) for s in out.manifest.shards]
    store = GroupStore(shards, tmp_path)
    kept = [pq.read_table(p).filter(pc.field("keep")).to_pylist() for p, _ in shards]
    rows = [r for t in kept for r in t]
    expected_groups = list(dict.fromkeys(r["group_id"] for r in rows))
    assert len(store) == len(expected_groups)
    for k, gid in enumerate(expected_groups):
        g = store.group(k)
        mine = [r for r in rows if r["group_id"] == gid]
        assert g.group_id == gid and g.responses == [r["response_token_ids"] for r in mine]
        assert g.advantages == [r["advantage"] for r in mine] and g.reference == mine[0]["reference_token_ids"]
    # Reopening reuses the converted files (no second conversion) and gives the same index.
    again = GroupStore(shards, tmp_path)
    assert (again.index == store.index).all()


def test_overlong_sequences_are_truncated_and_counted_once(tiny_config, tmp_path):
    cfg = load_config(tiny_config())
    run_stage("generate", cfg)
    out = run_stage("score", cfg)
    shards = [(out.target.dir.path / s.name, s.sha256) for s in out.manifest.shards]
    store = GroupStore(shards, tmp_path, max_seq_len=5, overlong="truncate")
    for _ in range(2):  # a second epoch does not count again
        for k in range(len(store)):
            g = store.group(k)
            assert all(len(g.prompt) + len(r) <= 5 for r in g.responses)
    assert store.stats.truncated > 0
    first = store.stats.truncated
    store.group(0)
    assert store.stats.truncated == first


def test_overlong_skip_never_trains_on_a_stand_in_reference(tiny_config, tmp_path):
    """overlong=skip with references that cannot fit: such a group must not train imitation
    (Â_y ≠ 0) on stand-in tokens. GRAO and SFT give it zero loss and zero gradient, from the
    Python batches and from the Rust kernel's (what the learner uses); it counts as skipped."""
    import torch

    from grao_pipe import hf
    from grao_pipe.config import TrainConfig
    from grao_pipe.learner.data import collate
    from grao_pipe.learner.step import step_loss
    from grao_pipe.pipeline import Pipeline

    cfg = load_config(tiny_config())
    run_stage("generate", cfg)
    out = run_stage("score", cfg)
    shards = [(out.target.dir.path / s.name, s.sha256) for s in out.manifest.shards]
    rows = [r for p, _ in shards for r in pq.read_table(p).filter(pc.field("keep")).to_pylist()]
    # Prompts "a+b=" are 4 tokens, references "s" + EOS at least 2: none fits in 5.
    assert all(len(r["prompt_token_ids"]) + len(r["reference_token_ids"]) > 5 for r in rows)
    store = GroupStore(shards, tmp_path, max_seq_len=5, overlong="skip")
    ks = [k for k in range(len(store)) if (g := store.group(k)).responses and g.reference_advantage != 0]
    assert ks and store.stats.skipped >= len(store)
    model = hf.load_model(Pipeline(cfg).policy(1).local_dir(), purpose="test", dtype=torch.float32)
    python_batch = collate([store.group(k) for k in ks], pad_id=0)
    (kernel_batch, _), = store.micro_batches(ks, pad_id=0)
    for batch in (python_batch, kernel_batch):
        for objective in ("grao", "sft"):
            model.zero_grad()
            loss_B, terms, _ = step_loss(model, batch, TrainConfig(objective=objective), torch.device("cpu"))
            loss_B.sum().backward()
            assert loss_B.abs().max().item() == 0.0 and all(t.abs().max().item() == 0.0 for t in terms.values())
            assert all(p.grad is None or p.grad.abs().max().item() == 0.0 for p in model.parameters())
