"""Redis: every key name once, the Lua scripts, connections, and the one gateway
that loads a book and commits effects atomically.
"""
