"""Progress lines: their format, their rate limit, and how another process's lines are read back."""

import io
import time

from grao_pipe import progress


def test_line_has_done_total_rate_eta_and_errors():
    t = progress.Task("judge helpful", total=40, unit="calls")
    t.advance(10, errors=2)
    line = t.line()
    assert line.startswith("progress judge helpful: 10/40 calls (25%) | ")
    assert " calls/s | " in line and "| ETA " in line and line.endswith("| errors 2")
    t.advance(30, tokens=1200)
    t.finish()
    assert "1200 tokens, " in t.line() and "tok/s" in t.line() and "| done |" in t.line()


def test_unknown_total_has_no_eta():
    t = progress.Task("train", unit="steps")
    assert "0/? steps" in t.line() and "ETA ?" in t.line()


def test_parse_line_reads_a_line_back():
    t = progress.Task("train", total=12, unit="steps", start=3)
    t.update(7, tokens=5000, errors=1)
    got = progress.parse_line(t.line())
    assert got == {"label": "train", "done": 7, "total": 12, "unit": "steps", "tokens": 5000, "errors": 1}
    assert progress.parse_line("[rank0]: some warning") is None


def test_board_prints_plain_lines_every_n_seconds_off_a_terminal(monkeypatch):
    monkeypatch.setenv(progress.ENV_EVERY, "0.05")
    out = io.StringIO()  # not a TTY: plain lines
    with progress.board("score", stream=out):
        t = progress.task("judge j", total=4, unit="calls")
        t.advance()
        time.sleep(0.3)  # nothing advances: lines still come (a sign of life)
        t.advance(3)
    lines = out.getvalue().splitlines()
    assert lines[0] == "progress score: started"
    judge = [x for x in lines if x.startswith("progress judge j: ")]
    assert len(judge) >= 3  # several ticks, then the final line
    assert judge[0].startswith("progress judge j: 1/4 calls") and judge[-1].startswith("progress judge j: 4/4 calls")
    assert any(x.startswith("progress score: ") for x in lines)  # the stage's own task


def test_every_zero_turns_lines_off_and_no_board_is_silent(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV_EVERY, "0")
    out = io.StringIO()
    with progress.board("generate", stream=out):
        progress.task("generate", total=2).advance(2)
        time.sleep(0.05)
    assert out.getvalue() == ""
    progress.task("judge x", total=1).advance()  # no board: counted, not printed
    assert capsys.readouterr().err == ""


def test_every_env_parsing(monkeypatch):
    monkeypatch.delenv(progress.ENV_EVERY, raising=False)
    assert progress.every_s() == 30.0
    monkeypatch.setenv(progress.ENV_EVERY, "5")
    assert progress.every_s() == 5.0
    monkeypatch.setenv(progress.ENV_EVERY, "soon")
    assert progress.every_s() == 30.0


def test_follow_reads_a_childs_progress_lines(tmp_path):
    import subprocess
    import sys

    log = tmp_path / "train.log"
    code = ("from grao_pipe import progress\nimport time\n"
            "for s in range(1, 4):\n    progress.learner_step(s, 3, 100)\n    time.sleep(0.05)\n")
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT)
        t = progress.Task("train", unit="steps")
        assert progress.follow(log, proc, t, poll_s=0.02) == 0
    assert (t.done, t.total, t.tokens) == (3, 3, 300)
    lines = log.read_text().splitlines()
    assert [progress.parse_line(x)["done"] for x in lines] == [1, 2, 3]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_live_bar_not_log_lines(monkeypatch):
    monkeypatch.setenv(progress.ENV_EVERY, "0.05")
    out = _Terminal()
    with progress.board("generate", stream=out):
        progress.task("generate", total=3, unit="prompts").advance(3, tokens=30)
        time.sleep(0.2)
    text = out.getvalue()
    assert "generate" in text and "3/3" in text and "tok/s" in text
    assert "progress generate:" not in text  # the plain-line form is for non-terminals
