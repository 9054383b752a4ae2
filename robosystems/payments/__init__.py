"""Payment providers: one protocol (:mod:`.base`), two implementations (``stripe``, ``local``).

Use :func:`robosystems.payments.factory.get_provider` to get the configured one.
"""
