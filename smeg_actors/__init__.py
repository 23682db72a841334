"""smeg's runtime: pykka actors, supervision, wiring and the ``smeg`` command line.

The composition root (``bootstrap``) and the CLI are the only modules that import ``adapters``.
"""
