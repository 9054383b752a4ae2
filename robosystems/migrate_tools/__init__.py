"""Tools for upgrading a production legacy database: preflight, snapshot, verification, revision runtime helpers.

* :mod:`.runtime` - used INSIDE data-moving revisions: bounded lock waits (``lock_timeout``), ``statement_timeout``,
  ``application_name``, key-range batching and progress logging.
* :mod:`.checksums` - what "business columns" means per legacy table, in every shape the chain gives it.
* :mod:`.snapshot` - the snapshot revision ``a1b2c3d4e5f6`` records counts/checksums/balances before data moves.
* :mod:`.preflight` - read-only report on a legacy database: what the upgrade will do, what would stop it.
* :mod:`.verify` - after the upgrade: snapshot comparison and invariants.
"""
