# A CPU image of teambot: the same install as `make install`, then `teambot serve`.
FROM python:3.11-slim

# A compiler and CMake build llama-cpp-python; make runs the install.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md Makefile ./
COPY bot ./bot
COPY rag ./rag
COPY inference ./inference
COPY config ./config
COPY examples ./examples
RUN make install TORCH_INDEX=https://download.pytorch.org/whl/cpu

# teambot runs as a user of its own, not root: it owns only /data (a named volume starts with this
# ownership; a bind-mounted folder must be writable by uid 10001) and its home; the code and the
# virtual environment stay root's, read-only to it. /knowledge is only read.
RUN groupadd --system --gid 10001 teambot \
    && useradd --system --uid 10001 --gid teambot --home-dir /home/teambot --create-home --shell /usr/sbin/nologin teambot \
    && mkdir -p /data /knowledge \
    && chown teambot:teambot /data
USER teambot:teambot

# Listen on every interface of the container, so that published ports reach teambot: 8080 serves
# /slack/events, /healthz and /metrics, and the admin console has a port of its own, 8081, so that
# publishing 8080 to the world never exposes /admin (publish 8081 only where admins are, e.g.
# -p 127.0.0.1:8081:8081). Request bodies are limited and the console checks Host and Origin (add
# the public name with TEAMBOT_CONSOLE__ALLOWED_HOSTS='["teambot.example.com"]').
ENV PATH=/app/.venv/bin:$PATH \
    HOME=/home/teambot \
    TEAMBOT_DATA_DIR=/data \
    TEAMBOT_RAG__KNOWLEDGE_DIR=/knowledge \
    TEAMBOT_HTTP_HOST=0.0.0.0 \
    TEAMBOT_HTTP_PORT=8080 \
    TEAMBOT_CONSOLE__HOST=0.0.0.0 \
    TEAMBOT_CONSOLE__PORT=8081
EXPOSE 8080 8081
VOLUME ["/data", "/knowledge"]
# The first index and the LLM's start can take minutes: failures count after start-period.
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('TEAMBOT_HTTP_PORT', '8080')}/healthz\", timeout=8).status == 200 else 1)"]
# serve starts even when the first index refuses (e.g. /knowledge mounted empty, which the
# mass-delete guard stops): it answers from the chunks it has and reports the refusal.
CMD ["sh", "-c", "teambot index; exec teambot serve"]
