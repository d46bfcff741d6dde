"""The torch FSDP2 learner, run under torchrun (one process per device)."""
