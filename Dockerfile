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

ENV PATH=/app/.venv/bin:$PATH \
    TEAMBOT_DATA_DIR=/data \
    TEAMBOT_RAG__KNOWLEDGE_DIR=/knowledge
VOLUME ["/data", "/knowledge"]
CMD ["sh", "-c", "teambot index && exec teambot serve"]
