"""atc-il core: the contracts (schemas, units, geometry, configuration, errors) every other package builds on.

This package imports none of ``pipelines``, ``simulator_adapters``, ``models`` or ``api``;
the CLI (``atc_il.cli``) is the composition root that imports them lazily per subcommand.
"""

__version__ = "0.1.0"
