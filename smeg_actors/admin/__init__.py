"""The admin interface: the HTTP API under ``/api`` (``api``) and who may use it (``auth``)."""
