"""atc-il core: the contracts (schemas, units, geometry, configuration, errors) every other package builds on.

This package imports none of ``pipelines``, ``models``, ``simulator_adapters``, ``api`` or ``atc_il_cli``;
the CLI and the quickstart (the ``atc_il_cli`` package) are the composition root that imports them lazily per
subcommand. tests/test_layers.py checks the direction of every import.
"""

__version__ = "0.1.0"
