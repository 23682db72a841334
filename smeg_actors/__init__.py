"""smeg's runtime: pykka actors, supervision, wiring and the ``smeg`` command line.

``actors/`` holds the actors (ports only), ``runtime/`` the settings, the composition root and the
process group, ``cli/`` the commands. Only ``runtime`` and ``cli`` import ``adapters``.
"""
