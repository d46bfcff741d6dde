"""The pipeline's stages. Each module exposes ``run(cfg, round_, force) -> Outcome``."""
