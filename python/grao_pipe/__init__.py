"""grao-pipe: an offline pipeline that aligns causal LMs with GRAO (arXiv 2508.07750).

Three cached stages (generate, score, train) that talk only through Parquet shards and
manifests (see ``grao_pipe.schemas``). Importing this package never imports torch or vLLM.
"""

__version__ = "0.1.0"
