"""The composition root: the ``atc-il`` command line (:mod:`atc_il_cli.cli`) and the quickstart main job
(:mod:`atc_il_cli.quickstart`).

The one package that imports every other (``atc_il``, ``pipelines``, ``models``, ``simulator_adapters``,
``api``), lazily per subcommand so that ``atc-il --help`` stays fast; no other package imports it.
"""
