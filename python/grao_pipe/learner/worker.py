"""Learner entry point, one process per device: ``torchrun ... -m grao_pipe.learner.worker SPEC``.

SPEC is the JSON ``LearnerSpec`` written by ``grao_pipe.stages.train``. The work is the recipe
(``learner.recipe.GRAORecipe``); this module makes the process safe to run under a scheduler:

- it dies with its parent (a parent-death signal), so killing ``grao-pipe``'s process group, as
  a scheduler or the OOM killer does, never leaves a learner writing into the stage directory;
- an exception is written to ``<train dir>/errors/rank-<r>.json``, from which the stage reports
  the root cause instead of torchrun's generic summary.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import traceback
from pathlib import Path

from grao_pipe.errors import full_errno
from grao_pipe.learner.records import RankError
from grao_pipe.learner.spec import LearnerSpec

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent (torchrun's agent) dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the call: do not outlive it
            os._exit(1)


def _record_failure(spec: LearnerSpec, e: BaseException) -> None:
    RankError(rank=int(os.environ.get("RANK", 0)), type=type(e).__name__, message=str(e),
              errno=full_errno(e) or (e.errno if isinstance(e, OSError) else None),
              traceback="".join(traceback.format_exception(e))).write(spec.errors_dir)


def main(spec_path: str) -> None:
    from grao_pipe.learner.recipe import GRAORecipe

    spec = LearnerSpec.read(Path(spec_path))
    recipe = GRAORecipe(spec)
    try:
        recipe.setup()
        recipe.train()
        recipe.export()
        recipe.cleanup()
    except BaseException as e:
        _record_failure(spec, e)
        raise


if __name__ == "__main__":
    die_with_parent()
    main(sys.argv[1])
    # Everything is written and the process group is gone. Skip interpreter teardown: a gloo
    # worker thread destroyed during static destruction occasionally aborts the process
    # ("terminate called without an active exception") after a fully successful run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
