"""rotation-fsm's benchmark: one command (`python -m benchmarks`), one table.

See `benchmarks/__main__.py` for what is measured and how; the README's
"Performance" section holds a full run's table.
"""
