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

# Listen on every interface of the container, so that a published port (-p 8080:8080) reaches
# /slack/events, /healthz, /metrics and /admin; request bodies are limited and the console checks
# Host and Origin (add the public name with TEAMBOT_CONSOLE__ALLOWED_HOSTS='["teambot.example.com"]').
ENV PATH=/app/.venv/bin:$PATH \
    TEAMBOT_DATA_DIR=/data \
    TEAMBOT_RAG__KNOWLEDGE_DIR=/knowledge \
    TEAMBOT_HTTP_HOST=0.0.0.0 \
    TEAMBOT_HTTP_PORT=8080
EXPOSE 8080
VOLUME ["/data", "/knowledge"]
# The first index and the LLM's start can take minutes: failures count after start-period.
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('TEAMBOT_HTTP_PORT', '8080')}/healthz\", timeout=8).status == 200 else 1)"]
# serve starts even when the first index refuses (e.g. /knowledge mounted empty, which the
# mass-delete guard stops): it answers from the chunks it has and reports the refusal.
CMD ["sh", "-c", "teambot index; exec teambot serve"]
