"""The pure model of smeg: the Message aggregate, its events, the backoff policy and the ports.

Nothing here does I/O or reads the environment; it imports only the standard library and
``eventsourcing.domain``. ``adapters`` and ``smeg_actors`` depend on it, never the reverse.
"""
