"""The commands a person runs: the `rotation-fsm` CLI, explain and status, dump
and replay, diagram, acl, demo and the local stack.
"""
