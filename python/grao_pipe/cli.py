"""``grao-pipe``: a thin CLI. Parse, load the typed config, call the stage, map errors to exit codes."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from grao_pipe import __version__
from grao_pipe.errors import FULL_ERRNOS, GraoError, storage_full
from grao_pipe.remote import display, local_workdir, publish

if TYPE_CHECKING:
    from grao_pipe.stages.common import Outcome

console = Console(stderr=True, soft_wrap=True)
# The report goes to stdout; a fixed width keeps it readable when piped to a log.
report_console = Console(width=160)

EXIT_OK = 0

_config_opt = click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), default=None,
                           help="YAML config (see pipelines/demo.yaml).")
_overrides = click.argument("overrides", nargs=-1)
_force = click.option("--force", is_flag=True, help="Redo the stage even if its output is cached.")
# Schedulers: exit with this code when the output was already cached (99: Airflow skips the task).
_cached_exit = click.option("--cached-exit-code", type=int, default=0, show_default=True,
                            envvar="GRAO_PIPE_CACHED_EXIT_CODE",
                            help="Exit code when the output was cached (99 makes Airflow skip the task).")
_round = click.option("--round", "round_", type=int, default=1, show_default=True,
                      help="Which round (rounds > 1 sample from the previous round's model).")


def _load(config_path: str | None, overrides: tuple[str, ...]):
    from grao_pipe.config import load_config

    return load_config(config_path, overrides)


def _guard(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except GraoError as e:
        _fail(e)
    except OSError as e:  # a full disk outside the store's commit points (logs, caches, exports)
        if e.errno not in FULL_ERRNOS:
            raise
        _fail(storage_full(e, e.filename or "an output file"))


def _fail(e: GraoError) -> None:
    console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
    sys.exit(e.exit_code)


def _say(o: Outcome) -> None:
    where = f"{o.ref.stage} round {o.ref.round} ({o.ref.key[:16]})"
    if o.manifest is None:
        console.print(f"{where}: {'; '.join(o.notes)}", markup=False)
        return
    st = o.manifest.data["stats"]
    size = f"{st['steps']} steps" if o.ref.stage == "train" else f"{o.manifest.data['rows']} rows"
    state = "cached, nothing to do" if o.cached else f"done in {o.seconds:.1f}s"
    console.print(f"{where}: {state} ({size} at {o.ref.directory})", markup=False)
    if o.ref.stage == "generate" and not o.cached:
        console.print(
            f"  {st['prompts']} prompts, {st['samples']} samples; response tokens mean "
            f"{st['mean_response_tokens']:.1f}, max {st['max_response_tokens']}; truncated responses "
            f"{st['truncated_responses']}; prompts skipped (too long) {st['prompts_skipped_overlong']}, "
            f"truncated {st['prompts_truncated']}; rows quarantined {st['quarantined_rows']}", markup=False)


def _parse_part(value: str | None) -> tuple[int, int]:
    if value is None:
        return (0, 1)
    k, sep, n = value.partition("/")
    if not sep or not k.isdigit() or not n.isdigit() or not 0 <= int(k) < int(n):
        raise click.BadParameter(f"{value!r} is not k/N with 0 <= k < N (example: --shard 0/4)")
    return int(k), int(n)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="grao-pipe")
@click.option("--wait", is_flag=True, help="Wait for a stage another process is running instead of exiting 75.")
def main(wait: bool) -> None:
    """Offline GRAO alignment: generate -> score -> train, each stage cached and re-runnable.

    Every verb takes -c CONFIG and key=value overrides (e.g. train.lr=1e-5).
    Exit codes: 0 done or cached, 2 config, 3 input, 4 input stage not finished, 5 corrupt data,
    6 learner failed, 7 server unreachable, 75 locked by another run (see docs).
    """
    if wait:
        from grao_pipe.stages.common import WAIT_FOR_LOCKS

        WAIT_FOR_LOCKS["wait"] = True


@main.command("generate")
@_config_opt
@_round
@_force
@_cached_exit
@click.option("--shard", "part", default=None, help="k/N: this worker writes shards i with i % N == k.")
@_overrides
def generate_cmd(config_path: str | None, round_: int, force: bool, cached_exit_code: int, part: str | None,
                 overrides: tuple[str, ...]) -> None:
    """Sample G responses per prompt into Parquet shards."""
    k_n = _parse_part(part)

    def go() -> None:
        from grao_pipe.stages import generate

        o = generate.run(_load(config_path, overrides), round_, force, part=k_n)
        _say(o)
        if o.cached:
            sys.exit(cached_exit_code)

    _guard(go)


def _stage_command(name: str, doc: str) -> None:
    @main.command(name, help=doc)
    @_config_opt
    @_round
    @_force
    @_cached_exit
    @_overrides
    def cmd(config_path: str | None, round_: int, force: bool, cached_exit_code: int, overrides: tuple[str, ...]) -> None:
        def go() -> None:
            from grao_pipe.stages.run import STAGE_RUNNERS

            o = STAGE_RUNNERS[name](_load(config_path, overrides), round_, force)
            _say(o)
            if o.cached:
                sys.exit(cached_exit_code)

        _guard(go)


_stage_command("score", "Score samples against the references and compute group advantages.")
_stage_command("train", "Train the policy on score's shards (torchrun, FSDP2).")


@main.command("run")
@_config_opt
@_force
@click.option("--report-json", type=click.Path(dir_okay=False), default=None, help="Also write the report as JSON.")
@click.option("--cached-exit-code", type=int, default=0, show_default=True, envvar="GRAO_PIPE_CACHED_EXIT_CODE",
              help="Exit code when every stage was cached (99 makes Airflow's BashOperator skip the task).")
@_overrides
def run_cmd(config_path: str | None, force: bool, report_json: str | None, cached_exit_code: int,
            overrides: tuple[str, ...]) -> None:
    """Run every stage of every round (run.rounds), skipping what is cached, then report."""

    def go() -> None:
        from grao_pipe.report import print_report
        from grao_pipe.stages.run import run

        cfg = _load(config_path, overrides)
        t0 = time.perf_counter()
        outcomes = run(cfg, force=force, on_outcome=_say)
        summary = print_report(outcomes, report_console)
        console.print(f"total {time.perf_counter() - t0:.1f}s")
        if report_json:
            with open(report_json, "w") as f:
                json.dump(summary, f, indent=2)
        if all(o.cached for o in outcomes):
            sys.exit(cached_exit_code)

    _guard(go)


@main.command("status")
@_config_opt
@_overrides
def status_cmd(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Show, for each round and stage, whether its output is done, partial, stale or missing."""

    def go() -> None:
        from rich.table import Table

        from grao_pipe.stages.status import status

        cfg = _load(config_path, overrides)
        table = Table(title=f"{cfg.name} in {cfg.workdir}")
        for col in ("round", "stage", "state", "key", "detail"):
            table.add_column(col)
        for s in status(cfg):
            table.add_row(str(s.round), s.stage, s.state, s.key or "-", s.detail)
        report_console.print(table)

    _guard(go)



@main.command("eval")
@_config_opt
@_force
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="Also copy the results here.")
@_overrides
def eval_cmd(config_path: str | None, force: bool, json_out: str | None, overrides: tuple[str, ...]) -> None:
    """RAS and NAG of the trained model vs the base model, with N and 95% intervals."""

    def go() -> None:
        from rich.table import Table

        from grao_pipe.stages.evaluate import run

        res = run(_load(config_path, overrides), force)
        table = Table(title=f"eval on {res['n_prompts']} prompts (scorer {res['scorer']}){' (cached)' if res['cached'] else ''}")
        for col in ("metric", "value", "95% CI", "N"):
            table.add_column(col, justify="right")
        for name, group in (("RAS", "ras"), ("RAS (base)", "ras_base"), ("NAG", "nag")):
            for kind, e in res[group].items():
                table.add_row(f"{name} {kind}", f"{e['value']:.3f}", f"[{e['low']:.3f}, {e['high']:.3f}]", str(e["n"]))
        report_console.print(table)
        if json_out:
            Path(json_out).write_text(json.dumps(res, indent=2))

    _guard(go)


@main.group("datasets")
def datasets_group() -> None:
    """Inspect rollout datasets (finished generate / score outputs) under a workdir."""


_workdir_opt = click.option("--workdir", "-w", default=None, help="Default: the config's workdir.")


def _workdir(config_path: str | None, workdir: str | None) -> Path:
    return local_workdir(workdir or _load(config_path, ()).workdir)


@datasets_group.command("list")
@_config_opt
@_workdir_opt
def datasets_list(config_path: str | None, workdir: str | None) -> None:
    """Every dataset version with its lineage."""

    def go() -> None:
        from rich.table import Table

        from grao_pipe.datasets import versions

        table = Table()
        for col in ("stage", "key", "round", "rows", "created", "prompt set", "policy"):
            table.add_column(col)
        for d, m in versions(_workdir(config_path, workdir)):
            inputs = m.data["inputs"]
            table.add_row(m.stage, d.name, str(inputs.get("round", "-")), str(m.data["rows"]), m.data["created_at"],
                          str((inputs.get("prompts") or {}).get("sha256", "-"))[:12], str(inputs.get("model", "-"))[:12])
        report_console.print(table)

    _guard(go)


@datasets_group.command("show")
@_config_opt
@_workdir_opt
@click.argument("key")
@click.option("--write", is_flag=True, help="Also save the card as card.json in the dataset directory.")
def datasets_show(config_path: str | None, workdir: str | None, key: str, write: bool) -> None:
    """The rollout card of one dataset version (KEY: a prefix of its key)."""

    def go() -> None:
        from grao_pipe.datasets import card, find

        d, m = find(_workdir(config_path, workdir), key)
        c = card(d, m)
        text = json.dumps(c, indent=2)
        click.echo(text)
        if write:
            from grao_pipe.store import atomic_write_bytes

            atomic_write_bytes(d / "card.json", (text + "\n").encode())
            publish(d / "card.json")  # beside the dataset on a remote workdir too

    _guard(go)


@datasets_group.command("verify")
@_config_opt
@_workdir_opt
@click.argument("key", required=False)
def datasets_verify(config_path: str | None, workdir: str | None, key: str | None) -> None:
    """Check every shard's checksum and schema version (all datasets, or KEY). Exit 5 if any fail."""

    def go() -> None:
        from grao_pipe.datasets import find, versions
        from grao_pipe.errors import DataError
        from grao_pipe.store import verify

        root = _workdir(config_path, workdir)
        targets = [find(root, key)] if key else versions(root)
        bad = 0
        for d, _ in targets:
            problems = verify(d)
            bad += bool(problems)
            console.print(f"{display(d)}: {'ok' if not problems else 'FAILED'}", markup=False)
            for p in problems:
                console.print(f"  {p}", markup=False)
        if bad:
            raise DataError(f"{bad} of {len(targets)} dataset(s) failed verification")

    _guard(go)


@main.group("models")
def models_group() -> None:
    """Bring models into the pipeline's format (Hugging Face directories)."""


@models_group.command("import")
@click.argument("gguf_file")
@click.option("--out", "out_root", default="models", show_default=True,
              help="Directory under which the content-addressed import is created.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="Weights' dtype: fp32 keeps the de-quantized values exactly, bf16 halves the size.")
def models_import(gguf_file: str, out_root: str, dtype: str) -> None:
    """Import a GGUF file (or pkg:MODULE/FILE) as a Hugging Face model directory; print its path.

    The same file and dtype always give the same directory, built once."""

    def go() -> None:
        from grao_pipe.models.gguf import import_gguf
        from grao_pipe.models.resolve import resolve_model_file

        t0 = time.perf_counter()
        out = import_gguf(resolve_model_file(gguf_file), Path(out_root), dtype)  # type: ignore[arg-type]
        console.print(f"{gguf_file}: {dtype} import ready in {time.perf_counter() - t0:.1f}s", markup=False)
        click.echo(str(out))

    _guard(go)


if __name__ == "__main__":
    main()
