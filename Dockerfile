# The TikTok token proxy as a container image.
#
#   docker build -t tiktok-proxy .
#   docker run -p 3333:3333 -e TIKTOK_CLIENT_KEY=<your client key> -e TIKTOK_CLIENT_SECRET tiktok-proxy
#   docker run --rm --env-file .env tiktok-proxy doctor        (the commands work too)
#
# The gate: your TikTok app's key and secret (-e TIKTOK_CLIENT_SECRET with no value takes it from your shell); for
# several TikTok apps behind one proxy, PROXY_SECRET and ALLOWED_CLIENT_KEYS (docs/gate-modes.md).
#
# BASE is any Debian-like image with python3 (3.11 or newer) and its venv module on PATH. scripts/container-test
# builds with one made from Debian's packages (no registry there); everyone else gets python:3.11-slim: of
# 3.11.7, 3.12.1 and 3.13.0 measured side by side, 3.11 relayed the most exchanges for the least CPU
# (docs/performance.md).
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies in their own layer: rebuilt only when the lock changes. requirements.lock pins every dependency,
# the transitive ones too, with the sha256 of each file: pip refuses anything else (--require-hashes) and
# installs nothing the lock does not name (--no-deps). docs/operations/deploy-dependencies.md: how to refresh
# it. pip itself is not needed to run.
COPY requirements.lock /app/requirements.lock
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --no-deps -r /app/requirements.lock \
    && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools

# Runs as a user with no shell and no home; it cannot write the code it runs. A numeric USER below lets
# Kubernetes' runAsNonRoot check it.
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin tiktok-proxy

# Only what the proxy needs, and its licence (Apache-2.0 asks that a copy go with the code): .dockerignore keeps
# everything else (.env, .git, tests, bench) out of the context.
COPY LICENSE proxy.py /app/
COPY tiktok_proxy /app/tiktok_proxy

# The venv's python3 comes first. HOST: listen on every interface, which a container needs to be reached; there
# the proxy refuses to start without a gate (above), with one line and exit code 2.
ENV PATH=/opt/venv/bin:$PATH \
    HOST=0.0.0.0 \
    PORT=3333
WORKDIR /app
USER 10001:10001
EXPOSE 3333

# No curl in the image: python3 does the check. It follows PORT, as the proxy does.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '3333'), timeout=4)"]

# Exec form: python is PID 1 and gets SIGTERM itself. uvicorn then stops accepting, lets the requests under way
# finish (up to REQUEST_TIMEOUT + TIKTOK_TIMEOUT + 1 seconds, 21 by default), and exits 0. Give it that long:
# docker stop -t 25, Kubernetes' terminationGracePeriodSeconds.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python3", "proxy.py"]
