"""Optional dependencies, by extra: a missing one is a config error that names the extra.

``import grao_pipe`` needs only the core (pyarrow, polars, pydantic, click, rich); engines are
imported by the stage that uses them, after ``require`` checked that they are installed.
"""

from __future__ import annotations

import importlib.util

from grao_pipe.errors import ConfigError

# module -> the extra of pyproject.toml that installs it
EXTRA_OF = {
    "torch": "hf",
    "transformers": "hf",
    "safetensors": "hf",
    "openai": "openai",
    "vllm": "vllm",
    "tensorboard": "tracking",
    "wandb": "tracking",
    "mlflow": "tracking",
    "gguf": "gguf",
    "matplotlib": "compare",
    "peft": "train",
}


def require(purpose: str, *modules: str) -> None:
    """Raise ConfigError (exit 2) unless every module is importable, naming the extra to install."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        extras = sorted({EXTRA_OF.get(m, m) for m in missing})
        spec = ",".join(extras)
        raise ConfigError(f"{purpose} needs the [{spec}] extra ({', '.join(missing)} not installed): "
                          f"pip install 'grao-pipe[{spec}]'")
