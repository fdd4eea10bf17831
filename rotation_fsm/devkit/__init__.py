"""What development, tests and demos need and production does not: the paper
exchange, the intent simulator, throwaway Redis and Redis Cluster processes, the
local Prometheus and the chaos run. Only the demo, the stack and the tests import it.
"""
