"""A stand-in log-prob model for objective tests: a learnable table of log-probs in place of a
network, so that every gradient is hand-checkable."""

from types import SimpleNamespace

import torch

from grao_pipe.learner.logprobs import CausalLMLogps


class TableLogps(CausalLMLogps):
    """log π(target at (r, c)) = table[r, c]: a learnable table in place of a network."""

    def __init__(self, logps_NT: torch.Tensor):
        torch.nn.Module.__init__(self)
        self.config = SimpleNamespace(_attn_implementation="eager")
        self.table = torch.nn.Parameter(logps_NT.clone())

    def forward(self, input_ids_RT, rows_K, cols_K, **_):
        return self.table[rows_K, cols_K]
