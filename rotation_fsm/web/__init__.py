"""The engine's HTTP face: health, readiness, metrics, the operator API, and the web
console (its routes, what it shows, its charts' history, live updates, static files).
"""
