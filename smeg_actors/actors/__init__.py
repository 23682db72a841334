"""The actors of one delivery process and the messages they exchange.

They see the outside world only through the ports of ``domain.ports``; the import contract
"the runtime's actors do not import adapters" (setup.cfg) keeps it so.
"""
