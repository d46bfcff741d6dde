"""Fault injection for the crash-consistency tests: ``GRAO_PIPE_KILL_AT=<point>[,<point>...]``
SIGKILLs the process group of the ``grao-pipe`` command at a named point, as a scheduler or the
OOM killer would. Points: ``train.step:<n>`` (after optimizer step n), ``train.checkpoint:<n>``
(after checkpoint n is committed), ``generate.import:<i>`` (after an import committed shard i),
``shard.spliced`` (a score shard's spliced temporary written, not yet renamed),
``train.export`` (half-way through writing the export), ``train.exported`` (export done,
manifest not yet written), ``export.written`` (an export's files written, not yet renamed into
place). Unset (always, outside tests): nothing happens.
"""

from __future__ import annotations

import os
import signal


def kill_point(point: str) -> None:
    wanted = os.environ.get("GRAO_PIPE_KILL_AT")
    if not wanted or point not in wanted.split(","):
        return
    # The grao-pipe command leads the group (the test starts it in a session of its own); the
    # learner's workers follow their parents through a parent-death signal.
    pgid = int(os.environ.get("GRAO_PIPE_PGID", os.getpgid(0)))
    os.killpg(pgid, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)  # not in that group: die anyway
