"""Everything that talks to the outside world: the event store, the broker, the providers.

Each adapter implements a port of ``domain`` and translates library errors into ours at the
boundary. Nothing here imports ``smeg_actors``.
"""
