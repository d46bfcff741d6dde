"""The stage graph: declared edges, the order run and status follow, and the Airflow DAG's."""

import ast
from pathlib import Path

import pytest

from grao_pipe.config import load_config
from grao_pipe.stages import STAGES, plan, round_order
from grao_pipe.stages.base import Edge, Upstream

ROOT = Path(__file__).resolve().parents[2]


def test_every_edge_names_a_registered_stage_and_the_round_order_follows_the_edges():
    order = [s.name for s in round_order()]
    for stage in STAGES.values():
        for edge in stage.upstream:
            assert edge.stage in STAGES and edge.offset in (0, -1)
            if edge.offset == 0:  # same-round inputs come first
                assert order.index(edge.stage) < order.index(stage.name)
    assert order == ["generate", "score", "train", "eval"]


def test_plan_is_every_round_in_graph_order_then_eval():
    steps = [(s.name, r) for s, r in plan(load_config(None, ["run.rounds=2", "run.eval=true"]))]
    assert steps == [("generate", 1), ("score", 1), ("train", 1), ("generate", 2), ("score", 2), ("train", 2),
                     ("eval", 2)]
    assert ("eval", 1) not in [(s.name, r) for s, r in plan(load_config(None))]


def test_upstream_resolves_only_declared_edges_once_and_a_model_before_round_one_is_the_base():
    calls = []
    up = Upstream("train", 1, (Edge("score"), Edge("train", -1, model=True)),
                  lambda e: calls.append(e) or f"target of {e.stage}", lambda e: calls.append(e) or "base model")
    assert up.output("score") == up.output("score") == "target of score"
    assert up.model("train", -1) == "base model"
    assert calls == [Edge("score"), Edge("train", -1, model=True)]
    with pytest.raises(KeyError, match="declares no edge"):
        up.output("generate")


def test_no_stage_asks_for_another_stage_by_name():
    for path in (ROOT / "python/grao_pipe/stages").glob("*.py"):
        text = path.read_text()
        assert "p.target(" not in text.replace("p.target(self.name", ""), path.name
        assert "p.policy(" not in text and "trained_policy(" not in text, path.name


def test_the_airflow_dag_chains_the_round_stages_in_graph_order():
    """The DAG (run under Airflow's own venv) chains one task per stage of a round; its chain
    must be the graph's order."""
    tree = ast.parse((ROOT / "pipelines/airflow/grao_pipe_dag.py").read_text())
    chains = [n for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.RShift)]
    outer = max(chains, key=lambda n: len(ast.unparse(n)))
    names = []
    for call in ast.walk(outer):
        if isinstance(call, ast.Call):
            func = call.func.value if isinstance(call.func, ast.Attribute) else call.func
            if isinstance(func, ast.Name) and func.id in STAGES:
                names.append((call.col_offset, func.id))
    assert [n for _, n in sorted(names)] == [s.name for s in round_order() if s.in_run]
