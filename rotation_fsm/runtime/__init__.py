"""The running engine: listener, timer, exchange client and live view, the
book engine (fetch, load, decide, commit), operator controls, metrics, heartbeats,
and `rotation-fsm run`'s wiring.
"""
