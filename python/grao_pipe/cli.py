"""``grao-pipe``: a thin CLI. Parse, load the typed config, call the stage, map errors to exit codes.

One verb per stage of the registry (``grao_pipe.stages.STAGES``), plus ``run``, ``status``,
``compare`` and ``datasets``. Heavy engines are imported by the stage that needs them, never here.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape

from grao_pipe import __version__
from grao_pipe.errors import FULL_ERRNOS, ConfigError, GraoError, InputError, storage_full

if TYPE_CHECKING:
    from grao_pipe.pipeline import Pipeline
    from grao_pipe.stages.base import Outcome, Stage

console = Console(stderr=True, soft_wrap=True)
# The report goes to stdout; a fixed width keeps it readable when piped to a log.
report_console = Console(width=160)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

_config_opt = click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), default=None,
                           help="YAML config (see pipelines/demo.yaml).")
_overrides = click.argument("overrides", nargs=-1)
_force = click.option("--force", is_flag=True, help="Redo the stage even if its output is cached.")
# Schedulers: exit with this code when the output was already cached (99: Airflow skips the task).
_cached_exit = click.option("--cached-exit-code", type=int, default=0, show_default=True,
                            envvar="GRAO_PIPE_CACHED_EXIT_CODE",
                            help="Exit code when the output was cached (99 makes Airflow skip the task).")


def _pipeline(config_path: str | None, overrides: tuple[str, ...]) -> Pipeline:
    from grao_pipe.config import load_config
    from grao_pipe.pipeline import Pipeline

    return Pipeline(load_config(config_path, overrides), wait_for_locks=click.get_current_context().find_root().params["wait"])


class _Terminated(BaseException):
    """SIGTERM or SIGHUP (a scheduler's timeout, a closed terminal), raised in the main thread
    so that the stage unwinds as on Ctrl-C: the learner is killed with its launcher."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated(signum)


def _guard(fn: Callable[[], Any]) -> None:
    """Every failure as one ``error:`` line and its exit code (docs/operations.md)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    try:
        fn()
    except GraoError as e:
        _fail(e)
    except OSError as e:  # a full disk outside the store's commit points (logs, caches, exports)
        if e.errno in FULL_ERRNOS:
            _fail(storage_full(e, e.filename or "an output file"))
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            _fail(InputError(f"{e.filename or 'a file'}: {os.strerror(e.errno)}; grao-pipe needs to write "
                             "there (the workdir, its lock files): check the permissions or the mount"))
        _internal(e)
    except KeyboardInterrupt:
        console.print("interrupted: every shard committed so far is kept; run the same command again "
                      "to resume", highlight=False)
        sys.exit(EXIT_INTERRUPTED)
    except _Terminated as t:
        name = signal.Signals(t.signum).name
        console.print(f"terminated by {name}: every shard committed so far is kept; run the same command "
                      "again to resume", highlight=False)
        sys.exit(128 + t.signum)
    except Exception as e:  # a bug: still one line (the traceback with GRAO_PIPE_DEBUG=1)
        _internal(e)


EXIT_INTERNAL = 70  # EX_SOFTWARE: a failure grao-pipe has no error class for, i.e. a bug


def _internal(e: BaseException) -> None:
    if os.environ.get("GRAO_PIPE_DEBUG"):
        raise e
    console.print(f"[red]error:[/red] internal error {type(e).__name__}: {escape(str(e))}; this is a bug in grao-pipe: "
                  "re-run with GRAO_PIPE_DEBUG=1 for the traceback and report it", highlight=False, soft_wrap=True)
    sys.exit(EXIT_INTERNAL)


def _fail(e: GraoError) -> None:
    # The message is text, not markup: 'score.scorers[b]' must not turn bold and vanish.
    console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
    sys.exit(e.exit_code)


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
    6 learner failed, 7 server unreachable, 74 disk full, 75 locked by another run, 130
    interrupted (see docs).
    """


def _stage_command(stage: Stage) -> None:
    def cmd(config_path: str | None, round_: int | None, force: bool, cached_exit_code: int,
            json_out: str | None, overrides: tuple[str, ...], part: str | None = None,
            sample: int | None = None) -> None:
        k_n = _parse_part(part)

        def go() -> None:
            if round_ is not None and round_ < 1:
                raise ConfigError(f"--round {round_}: rounds are numbered from 1 (to run.rounds)")
            if json_out and not Path(json_out).resolve().parent.is_dir():
                raise ConfigError(f"--json-out {json_out}: folder {Path(json_out).resolve().parent} does not "
                                  "exist; create it, or write elsewhere")
            p = _pipeline(config_path, overrides)
            # eval defaults to the model of the last round; every other stage to round 1.
            r = round_ or (p.cfg.run.rounds if stage.name == "eval" else 1)
            if sample:
                from grao_pipe.scoring.preview import preview_judges

                click.echo(preview_judges(p, r, sample))
                return
            o = stage.run(p, r, force, k_n)
            stage.report(o, report_console if stage.name == "eval" else console)
            if json_out:
                Path(json_out).write_text(json.dumps(_outcome_json(o), indent=2))
            if o.cached:
                sys.exit(cached_exit_code)

        _guard(go)

    params = [_config_opt, click.option("--round", "round_", type=int, default=None,
                                        help="Which round (default 1; eval: the last round, run.rounds)."),
              _force, _cached_exit,
              click.option("--json-out", type=click.Path(dir_okay=False), default=None,
                           help="Also write the outcome (key, directory, stats) as JSON."), _overrides]
    if stage.shardable:
        params.append(click.option("--shard", "part", default=None, help="k/N: this worker writes shards i with i % N == k."))
    if stage.name == "score":
        params.append(click.option("--sample", type=click.IntRange(1, 100), default=None,
                                   help="Dry run: print N rendered judge prompts of the generate output, each "
                                   "judge's raw answers and parsed verdicts; writes nothing."))
    for decorate in reversed(params):
        cmd = decorate(cmd)
    main.command(stage.name, help=stage.help)(cmd)


def _outcome_json(o: Outcome) -> dict[str, Any]:
    return {"stage": o.target.stage, "round": o.target.round, "key": o.target.key, "directory": o.target.dir.display,
            "cached": o.cached, "finished": o.manifest is not None, "seconds": round(o.seconds, 3),
            "stats": o.manifest.stats.model_dump(mode="json") if o.manifest is not None else None}


def _register_stages() -> None:
    from grao_pipe.stages import STAGES

    for stage in STAGES.values():
        _stage_command(stage)


_register_stages()


@main.command("run")
@_config_opt
@_force
@click.option("--report-json", type=click.Path(dir_okay=False), default=None, help="Also write the report as JSON.")
@_cached_exit
@_overrides
def run_cmd(config_path: str | None, force: bool, report_json: str | None, cached_exit_code: int,
            overrides: tuple[str, ...]) -> None:
    """Run every stage of every round (run.rounds), skipping what is cached, then report."""

    def go() -> None:
        from grao_pipe.report import print_report
        from grao_pipe.stages import STAGES

        p = _pipeline(config_path, overrides)
        t0 = time.perf_counter()
        outcomes = p.run(force=force, on_outcome=lambda o: STAGES[o.target.stage].report(o, console))
        summary = print_report(outcomes, report_console)
        console.print(f"total {time.perf_counter() - t0:.1f}s")
        if report_json:
            Path(report_json).write_text(json.dumps(summary, indent=2))
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

        p = _pipeline(config_path, overrides)
        table = Table(title=f"{p.cfg.name} in {p.cfg.workdir}")
        for col in ("round", "stage", "state", "key", "detail"):
            table.add_column(col)
        for s in p.status():
            table.add_row(str(s.round), s.stage, s.state, s.key or "-", s.detail)
        report_console.print(table)

    _guard(go)


@main.command("compare")
@_config_opt
@click.option("--report-only", is_flag=True, help="Re-render the report from the existing results.parquet; train nothing.")
@_overrides
def compare_cmd(config_path: str | None, report_only: bool, overrides: tuple[str, ...]) -> None:
    """Train every variant x seed of the config's compare section from the same cached rollouts,
    evaluate on held-out prompts, and report with the seed as the unit (Holm within declared families)."""

    def go() -> None:
        from grao_pipe.compare.run import Compare

        c = Compare(config_path, overrides, log=lambda m: console.print(m, markup=False, highlight=False))
        out = c.rerender() if report_only else c.run()
        report_console.print((out / "report.md").read_text(encoding="utf-8"), markup=False, highlight=False)
        console.print(f"results: {out / 'results.parquet'}; report: {out / 'report.html'}", markup=False)

    _guard(go)


@main.group("datasets")
def datasets_group() -> None:
    """Rollout datasets (finished generate / score outputs) under a workdir: list, show, verify, export."""


_workdir_opt = click.option("--workdir", "-w", default=None, help="Default: the config's workdir.")


def _workdir(config_path: str | None, workdir: str | None) -> Any:
    from grao_pipe.config import load_config
    from grao_pipe.errors import InputError
    from grao_pipe.storage import Workdir

    w = Workdir(workdir or load_config(config_path, ()).workdir)
    if not w.exists():
        raise InputError(f"workdir {w.location} does not exist (nothing to inspect); check --workdir / the config")
    return w


@datasets_group.command("list")
@_config_opt
@_workdir_opt
def datasets_list(config_path: str | None, workdir: str | None) -> None:
    """Every dataset version with its lineage."""

    def go() -> None:
        from rich.table import Table

        from grao_pipe.datasets import lineage, manifests
        from grao_pipe.errors import DataError

        table = Table()
        for col in ("stage", "key", "round", "rows", "created", "prompt set (sha256)", "model", "scorers"):
            table.add_column(col)
        root = _workdir(config_path, workdir)
        for d, m in manifests(root):
            if isinstance(m, DataError):  # one damaged dataset: shown, the others still listed
                table.add_row(d.path.parent.name, d.name, "-", "corrupt", "-", "-", "-", "-")
                console.print(f"warning: {m}", markup=False, highlight=False)
                continue
            if m is None:
                continue
            lin = lineage(root, m)
            prompts = f"{lin.get('prompt_set') or '?'} ({str(lin.get('prompt_set_sha256') or '-')[:12]})"
            model = str(lin.get("model") or str(lin.get("model_digest") or "-")[:12])
            scorers = ", ".join(f"{k}={v}" for k, v in (lin.get("scorer_sources") or {}).items()) or "-"
            table.add_row(m.stage, d.name, str(m.inputs.round or "-"), str(m.rows), m.created_at, prompts, model,
                          scorers)
        report_console.print(table)

    _guard(go)


@datasets_group.command("show")
@_config_opt
@_workdir_opt
@click.argument("key")
@click.option("--write", is_flag=True, help="Also write the dataset card (README.md) into the dataset directory.")
def datasets_show(config_path: str | None, workdir: str | None, key: str, write: bool) -> None:
    """The rollout card of one dataset version (KEY: a prefix of its key)."""

    def go() -> None:
        from grao_pipe.datasets import card, card_markdown, find

        d, m = find(_workdir(config_path, workdir), key)
        c = card(d, m)
        click.echo(json.dumps(c, indent=2))
        if write:
            d.write_file("README.md", card_markdown(d, m, c).encode(), publish=True)

    _guard(go)


@datasets_group.command("verify")
@_config_opt
@_workdir_opt
@click.argument("key", required=False)
def datasets_verify(config_path: str | None, workdir: str | None, key: str | None) -> None:
    """Check every shard's checksum, schema version and row count (all datasets, or KEY). Exit 5 if any fail."""

    def go() -> None:
        from grao_pipe.datasets import dataset_dirs, find
        from grao_pipe.errors import DataError, InputError

        root = _workdir(config_path, workdir)
        targets = [find(root, key)[0]] if key else dataset_dirs(root)
        if not targets:
            raise InputError(f"no dataset in {root.location}; nothing to verify")
        bad = 0
        for d in targets:
            if not key and not d.has_manifest():
                console.print(f"{d.display}: unfinished (no manifest yet), skipped", markup=False)
                continue
            problems = d.verify()
            bad += bool(problems)
            console.print(f"{d.display}: {'ok' if not problems else 'FAILED'}", markup=False)
            for p in problems:
                console.print(f"  {p}", markup=False)
        if bad:
            raise DataError(f"{bad} of {len(targets)} dataset(s) failed verification")

    _guard(go)


@datasets_group.command("export")
@_config_opt
@_workdir_opt
@click.argument("key")
@click.option("--format", "fmt", type=click.Choice(["dataset", "preference", "kto", "prompt-completion"]),
              default="dataset", show_default=True, help="What to write (see docs/datasets.md).")
@click.option("--pairs", type=click.Choice(["best-worst", "reference-sample", "dataset"]), default="best-worst",
              show_default=True, help="preference: best vs worst sample of a group, the reference vs each worse "
              "sample, or the dataset's own pairs (reference vs the dataset's rejected answer, e.g. HH).")
@click.option("--keep-truncated", is_flag=True,
              help="Let truncated samples (finish_reason length) be chosen answers, completions or desirable "
              "KTO rows (their finish_reason column marks them); by default they are not.")
@click.option("--kto-threshold", type=float, default=0.0, show_default=True,
              help="kto: a sample is desirable when its reward R(o, y) >= this (0: at least as good as the reference).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Output directory (new or empty); written whole or not at all.")
def datasets_export(config_path: str | None, workdir: str | None, key: str, fmt: str, pairs: str,
                    keep_truncated: bool, kto_threshold: float, out_dir: str) -> None:
    """Write a dataset version as a `datasets`-loadable directory or in a TRL training format."""

    def go() -> None:
        from grao_pipe.datasets import export, find

        d, m = find(_workdir(config_path, workdir), key)
        result = export(d, m, fmt, Path(out_dir), pairs=pairs, keep_truncated=keep_truncated,
                        kto_threshold=kto_threshold)
        for w in result.warnings:
            console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
        console.print(f"{result.rows} rows ({fmt}) written to {out_dir}", markup=False)

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
