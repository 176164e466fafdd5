"""Review backends: translate between the store's candidates and verdicts and a server's records.

Backends do no store I/O: the sync use case writes what they return.
"""
