# First image: installs the locked dependencies with uv and runs `nebuliser`.
# The deployment work (issue 7) hardens it (multi-stage, non-root, dialout).
FROM python:3.11-slim
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
WORKDIR /app
ENV UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project
COPY controller ./controller
COPY drivers ./drivers
COPY simulators ./simulators
COPY config ./config
RUN uv sync --locked --no-dev
ENTRYPOINT ["/app/.venv/bin/nebuliser"]
CMD ["--help"]
