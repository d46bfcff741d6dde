"""``grao-pipe compare``: several methods trained from the same cached rollouts, judged with the
seed as the unit of inference (design §5). ``stats`` is the statistics (numpy only), ``run`` the
orchestration over ordinary cached stages, ``report`` the rendering."""
