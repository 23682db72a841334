"""Process exit codes: what an orchestrator (systemd, Kubernetes) sees when smeg stops.

``smeg run --processes N`` exits with the code of the first delivery process that ended by
itself, or 128 + N when that process was killed by signal N.
"""

EXIT_OK = 0
EXIT_REFUSED = 1  #: unknown message id, or an operation the message's state refuses
EXIT_CONFIG = 2  #: invalid settings or command-line arguments
EXIT_UNHEALTHY = 3  #: a dependency failed the start-up check
EXIT_BROKER_LOST = 4  #: the broker connection, heartbeat or consumer was lost
EXIT_ESCALATED = 5  #: a supervisor's restart intensity was exceeded
EXIT_STORE_LOST = 6  #: the event store kept failing for longer than SMEG_STORE_GRACE
