# rotation-fsm: the engine, the paper exchange and the intent simulator in one image;
# docker-compose.yml picks the command. Two stages: wheels are built in the first, and
# the final image gets only the installed wheels — no compiler, no build tools.

FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
# Wheels of the project and of every dependency (all have manylinux wheels, so no
# compiler is needed even here).
COPY pyproject.toml README.md ./
COPY rotation_fsm ./rotation_fsm
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
USER app
WORKDIR /tmp
# 8044: the engine's /healthz, /readyz, /metrics, /rotations; 8090: the paper exchange.
EXPOSE 8044 8090
# The engine is healthy when ready (Redis reachable, consumer groups in place), on the
# port it serves (METRICS_PORT); compose sets its own check for the other commands.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('METRICS_PORT', '8044'), timeout=2)"]
CMD ["rotation-fsm", "run"]
