"""The learner's torchrun command line: standalone on one node, static rendezvous on several."""

import sys
from pathlib import Path

import pytest

from grao_pipe.config import TrainConfig, load_config
from grao_pipe.errors import ConfigError
from grao_pipe.sections import keyed
from grao_pipe.stages.train import torchrun_command

SPEC = Path("runs/train/abc/spec.json")
TAIL = ["-m", "grao_pipe.learner.worker", str(SPEC)]


def test_one_node_is_standalone():
    cmd = torchrun_command(TrainConfig(nproc=4), SPEC, "abc")
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                   "--nproc-per-node=4", *TAIL]


def test_several_nodes_meet_at_node_zero():
    cfg = TrainConfig(nproc=8, nnodes=4, node_rank=2, rdzv_endpoint="node0.cluster:29500")
    cmd = torchrun_command(cfg, SPEC, "abc")
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--nnodes=4", "--node-rank=2",
                   "--rdzv-backend=static", "--rdzv-endpoint=node0.cluster:29500", "--rdzv-id=abc",
                   "--nproc-per-node=8", *TAIL]
    assert "--standalone" not in cmd


@pytest.mark.parametrize("overrides,match", [
    (["train.nnodes=2"], "rdzv_endpoint"),
    (["train.nnodes=2", "train.node_rank=2", "train.rdzv_endpoint=h:1"], "node_rank=2 must be below"),
])
def test_launch_settings_are_checked(tmp_path, overrides, match):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\n")
    with pytest.raises(ConfigError, match=match):
        load_config(path, overrides)


def test_node_rank_and_monitoring_are_not_part_of_what_is_computed():
    unkeyed = TrainConfig.unkeyed_fields()
    assert {"node_rank", "rdzv_endpoint", "logging"} <= set(unkeyed)
    assert "nnodes" not in unkeyed  # the world size is
    a = TrainConfig(nnodes=2, node_rank=0, rdzv_endpoint="h:1", logging={"backends": ["tensorboard"]})
    b = TrainConfig(nnodes=2, node_rank=1, rdzv_endpoint="other:2")
    assert keyed(a) == keyed(b) and keyed(a) != keyed(TrainConfig(nnodes=3, rdzv_endpoint="h:1"))


def test_a_logger_without_its_package_fails_before_launch(monkeypatch):
    import importlib.util

    from grao_pipe.stages import train

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"train.logging.backends=\[tensorboard\] needs the \[tracking\] extra"):
        train.check_loggers(TrainConfig(logging={"backends": ["tensorboard"]}))
    train.check_loggers(TrainConfig())  # none: nothing to check
