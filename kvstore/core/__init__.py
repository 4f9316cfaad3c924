"""Pure protocol cores: no sockets, no asyncio, no clock reads.

Time and randomness are arguments, so every core is deterministic and simulable.
"""
