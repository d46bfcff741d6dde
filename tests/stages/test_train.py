"""Learner: exact resume after SIGKILL, baselines from the same shards, column checks."""

import json
import subprocess

import pyarrow.parquet as pq
import pytest
from stage_runner import run_stage, stage_dir

from grao_pipe.config import load_config
from grao_pipe.errors import InputError
from grao_pipe.stages.train import check_columns


def _losses(directory):
    return [json.loads(x)["loss"] for x in (directory / "metrics.jsonl").read_text().splitlines()]


def _prepare(cfg):
    run_stage("generate", cfg)
    run_stage("score", cfg)


SUMS = {"data": {"prompts": "builtin:sums_train"},
        "score": {"reference_logprobs": True,
                  "scorers": [{"kind": "function", "name": "sums", "function": "grao_pipe.tasks.sums:score"}]}}


@pytest.mark.parametrize("objective,extra,sections", [
    ("dpo", [], SUMS),  # dataset pairs: chosen = the reference, rejected = the dataset's answer
    # score computes the reference log-probs these objectives declare (no score.reference_logprobs)
    ("dpo", ["train.dpo.pairs=samples"], {}),
    # The tiny model's samples often all score alike: with GRPO's samples-only advantages most
    # groups are degenerate, which score refuses by default.
    ("grpo", ["train.grpo.kl=0.05"], {"score": {"max_degenerate_share": 1.0}}),
    ("token_grpo", ["train.token_grpo.loss_type=dr_grpo", "train.token_grpo.max_completion_tokens=3"],
     {"score": {"max_degenerate_share": 1.0}}),
    ("ppo", ["train.keep_checkpoints=true"], SUMS),  # the test reads the critic from a checkpoint
    # LM head in chunks of 2 scored tokens: several chunks under FSDP2, tied head.
    ("sft", ["train.activation_checkpointing=true", "train.pack_tokens=64", "train.logprob_chunk_tokens=2"],
     {"score": {"reference_logprobs": True}}),
])
def test_baselines_train_from_the_same_shards(tiny_config, objective, extra, sections):
    cfg = load_config(tiny_config(**sections), [f"train.objective={objective}", *extra])
    _prepare(cfg)
    out = run_stage("train", cfg)
    metrics = [json.loads(x) for x in (out.target.dir.path / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and all(m["real_tokens"] > 0 for m in metrics)
    keys = {"dpo": {"loss_dpo", "dpo_pair_share"}, "grpo": {"loss_kl"}, "sft": {"loss_nll_reference"},
            "token_grpo": {"loss_policy", "staleness_kl"},
            "ppo": {"loss_policy", "loss_value", "value_mean", "ppo_kl"}}[objective]
    assert keys <= set(metrics[0])
    if objective == "dpo":  # before any update the policy equals the reference: log 2 per pair
        assert metrics[0]["loss"] == pytest.approx(0.6931 * metrics[0]["dpo_pair_share"], abs=1e-3)
        dataset = "train.dpo.pairs=samples" not in extra
        assert metrics[0]["dpo_pair_share"] == 1.0 if dataset else 0 < metrics[0]["dpo_pair_share"] <= 1
    if objective == "ppo":
        assert metrics[0]["value_mean"] == 0.0  # the critic starts at zero
        from torch.distributed.checkpoint import FileSystemReader

        ckpt = next((out.target.dir.path / "checkpoints").glob("step-*"))
        saved = FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
        assert "model.value_head.weight" in saved  # the critic is in the checkpoint...
        from safetensors import safe_open

        with safe_open(str(out.target.dir.path / "model" / "model.safetensors"), "pt") as f:
            exported = list(f.keys())
        assert not any(k.startswith("value_head") for k in exported)  # ...not in the policy export


def test_dpo_dataset_pairs_without_rejected_answers_fail_before_training(tiny_config):
    cfg = load_config(tiny_config(score={"reference_logprobs": True}), ["train.objective=dpo"])
    _prepare(cfg)
    with pytest.raises(InputError, match=r"needs column 'reference_rejected_token_ids'.*train.dpo.pairs=samples"):
        run_stage("train", cfg)


def test_score_computes_what_the_objective_declares_and_train_checks_it(tiny_config):
    """DPO declares reference log-probs: its score stage computes them (another key than GRAO's,
    the rewards reused); shards scored without them fail the pre-flight, naming the fix."""
    grao = load_config(tiny_config())
    dpo = load_config(tiny_config(), ["train.objective=dpo", "train.dpo.pairs=samples"])
    _prepare(grao)
    _prepare(dpo)
    grao_score, dpo_score = stage_dir("score", grao), stage_dir("score", dpo)
    assert grao_score != dpo_score
    read = lambda d, c: pq.read_table(next(d.glob("*.parquet")), columns=[c])[c]  # noqa: E731
    assert read(dpo_score, "ref_logprobs").null_count == 0 and read(grao_score, "ref_logprobs").null_count > 0
    with pytest.raises(InputError, match=r"needs column 'ref_logprobs'.*re-run score"):
        check_columns(dpo.train, sorted(grao_score.glob("*.parquet")))


def test_gradient_accumulation_by_token_budget_matches_one_batch(tiny_config, tmp_path):
    one = load_config(tiny_config(), [f"workdir={tmp_path / 'one'}"])
    _prepare(one)
    expected = _losses(run_stage("train", one).target.dir.path)
    # ~20 tokens per micro-batch: every group is its own micro-batch, ranks get uneven counts.
    acc = load_config(tiny_config(), [f"workdir={tmp_path / 'acc'}", "train.micro_batch_tokens=20"])
    _prepare(acc)
    got = _losses(run_stage("train", acc).target.dir.path)
    assert got == pytest.approx(expected, abs=1e-5)


def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_train_one_model(tiny_config, tmp_path):
    """Two `grao-pipe train` runs, node_rank 0 and 1, one torchrun process each (static
    rendezvous on localhost), shared workdir: one learner of world size 2, one export."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    port = _free_port()
    nodes = [load_config(tiny_config(), ["train.nproc=1", "train.nnodes=2", f"train.node_rank={r}",
                                         f"train.rdzv_endpoint=127.0.0.1:{port}"]) for r in (0, 1)]
    _prepare(nodes[0])
    # Launch-only keys stay out of the cache key: both nodes write one output directory.
    assert stage_dir("train", nodes[0]) == stage_dir("train", nodes[1])
    pool = ThreadPoolExecutor(2)
    futures = [pool.submit(run_stage, "train", c) for c in nodes]
    done, _ = wait(futures, timeout=600, return_when=FIRST_EXCEPTION)
    if len(done) < 2 or any(f.exception() for f in done):
        # One node failed: its peer would wait for the rendezvous forever.
        subprocess.run(["pkill", "-f", f"rdzv-endpoint=127.0.0.1:{port}"], check=False)
        pool.shutdown(wait=True)
        raise AssertionError(f"a node failed: {[f.exception() for f in done]}")
    lead, other = (f.result() for f in futures)
    assert lead.manifest is not None and other.manifest is None  # node 0 writes the manifest
    out = lead.target.dir.path
    assert (out / "model" / "config.json").is_file() and (out / "train.node1.log").is_file()
    single = load_config(tiny_config(), [f"workdir={tmp_path / 'single'}"])  # 2 ranks on one node
    _prepare(single)
    assert _losses(out) == pytest.approx(_losses(run_stage("train", single).target.dir.path), abs=1e-5)


def test_every_metric_logger_writes_what_the_jsonl_holds(tiny_config, monkeypatch):
    """TensorBoard, W&B (offline) and MLflow (local file store), read back with their own tools."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 readers of a file store need it too
    import wandb_log
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(tiny_config(), ["train.logging.backends=[tensorboard,wandb,mlflow]"])
    _prepare(cfg)
    out = run_stage("train", cfg).target.dir.path
    losses = _losses(out)

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert {"train/loss", "train/loss_imitation", "train/grad_norm", "train/tokens_per_s"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(losses, abs=1e-6)

    (run_log,) = out.glob("wandb/offline-run-*/run-*.wandb")
    logged = [row for row in wandb_log.history(run_log) if "train/loss" in row]
    assert [row["train/loss"] for row in logged] == pytest.approx(losses, abs=1e-6)
    assert [row["_step"] for row in logged] == list(range(len(losses)))

    client = MlflowClient((out / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("grao-pipe").experiment_id])
    history = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
    assert [m.value for m in history] == pytest.approx(losses, abs=1e-6)
    assert run.data.params["objective"] == "grao" and run.info.run_name == out.name
