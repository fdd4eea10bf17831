"""The pure core: the rotation machine, regime and slot maths, decisions as data,
reasons, messages and market types. No I/O, no clock: replay and the unit tests run it
in memory.
"""
