"""Failure paths that used to end in a traceback: each is one error with its exit code."""

import errno
import json
from types import SimpleNamespace

import pytest

from grao_pipe.errors import InputError, StorageFull
from grao_pipe.storage import Workdir


def _read_only(monkeypatch):
    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(a[0]))

    monkeypatch.setattr("grao_pipe.storage.workdir.open", refuse, raising=False)


def test_a_read_only_workdir_runs_what_is_finished_and_names_the_lock_otherwise(tmp_path, monkeypatch):
    d = Workdir(tmp_path).stage_dir("generate", "ab" * 32)
    d.path.mkdir(parents=True)
    _read_only(monkeypatch)
    with pytest.raises(InputError, match=r"\.lock: cannot create the lock file \(Read-only file system\)"), \
            d.lock("generate"):
        pass
    (d.path / "_manifest.json").write_text("{}")
    with d.lock("generate"):  # finished: nothing will be written, no lock needed
        pass


def test_a_learner_report_cut_short_is_skipped_and_a_full_disk_is_74(tmp_path):
    from grao_pipe.stages.train import _root_cause

    errors = tmp_path / "errors"
    errors.mkdir()
    (errors / "rank-0.json").write_text("")  # the disk filled while it was written
    log = tmp_path / "train.log"
    log.write_text("...\nOSError: [Errno 28] No space left on device\n")
    spec = SimpleNamespace(errors_dir=errors)
    assert _root_cause(spec, log) == ("the learner exited without an error report "
                                      "(OSError: [Errno 28] No space left on device)")
    (errors / "rank-1.json").write_text(json.dumps({"rank": 1, "type": "OSError", "errno": errno.ENOSPC,
                                                    "message": "[Errno 28] No space left on device"}))
    with pytest.raises(StorageFull, match=r"rank 1: OSError: \[Errno 28\]"):
        _root_cause(spec, log)


def test_a_full_disk_while_building_the_tiny_model_is_74_and_leaves_no_temporary(tmp_path, monkeypatch):
    from transformers import Qwen2ForCausalLM

    from grao_pipe.config import TinyModelConfig
    from grao_pipe.models.tiny import build_tiny_model

    def full(self, *a, **k):
        raise RuntimeError("safetensors: write failed") from OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Qwen2ForCausalLM, "save_pretrained", full)
    with pytest.raises(StorageFull, match=r"cannot write the tiny model"):
        build_tiny_model(TinyModelConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1), ["1+1=2"], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_behind_another_error_type_is_recognised():
    """safetensors' export reports a full disk as its own error (wrapping the OSError, or only in
    its message): the learner records ENOSPC, so the train stage ends 74, not 6 'retry'."""
    from grao_pipe.errors import full_errno

    class SafetensorError(Exception):
        pass

    wrapped = SafetensorError("write failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    rust = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                           'message: "No space left on device" })')
    assert full_errno(wrapped) == full_errno(rust) == errno.ENOSPC
    assert full_errno(SafetensorError("header too large")) is None
    assert full_errno(OSError(errno.EACCES, "Permission denied")) is None
