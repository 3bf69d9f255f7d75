# syntax=docker/dockerfile:1
# The bedside controller image: `nebuliser serve` as a non-root user in `dialout`.
# Multi-arch: the same file builds linux/arm64 (Raspberry Pi 4/5) and linux/amd64:
#   docker buildx build --platform linux/arm64,linux/amd64 -t nebuliser:0.1.0 .
# Run (serial device passed in, never --privileged; docs/raspberry-pi.md):
#   docker run --device /dev/nebuliser -v nebuliser-data:/var/lib/nebuliser \
#     -v /etc/nebuliser/controller.toml:/etc/nebuliser/controller.toml:ro nebuliser:0.1.0
# The device node keeps the host's group: dialout (gid 20) works as is; if the udev
# rule gives it group nebuliser, add --group-add "$(getent group nebuliser | cut -d: -f3)".
# Not built in this project's CI (no container engine there); linted with hadolint.
#
# Base images are pinned by DIGEST, not only by tag (a tag can be re-pointed at any
# time). The digests are build arguments WITHOUT defaults, so a build that was not
# given them fails instead of silently taking whatever the tag points at today.
# Release checklist (docs/security.md §7): look the digests up on the release
# machine and record them in the release notes:
#   docker buildx imagetools inspect python:3.11-slim-bookworm   # "Digest: sha256:…"
#   docker buildx imagetools inspect ghcr.io/astral-sh/uv:0.9
#   docker buildx build --build-arg PYTHON_DIGEST=sha256:… --build-arg UV_DIGEST=sha256:… .
# Use the digest of the multi-arch index (what `imagetools inspect` prints first),
# so the same pin serves linux/arm64 and linux/amd64.
ARG PYTHON_DIGEST
ARG UV_DIGEST

# ---- uv, pinned ----------------------------------------------------------------------
FROM ghcr.io/astral-sh/uv:0.9@${UV_DIGEST} AS uv

# ---- build stage: resolve and install the locked dependencies with uv -------------
FROM python:3.11-slim-bookworm@${PYTHON_DIGEST} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/nebuliser
WORKDIR /src
# Dependencies first (a layer that changes only with uv.lock), then the project.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project
COPY controller ./controller
COPY drivers ./drivers
COPY simulators ./simulators
RUN uv sync --locked --no-dev --no-editable

# ---- runtime stage: the virtual environment and the example configs only -----------
FROM python:3.11-slim-bookworm@${PYTHON_DIGEST} AS runtime
# The serial device belongs to group dialout (gid 20 on Debian); the user is in it
# and in nothing else. No shell login, no home directory contents.
RUN useradd --system --uid 10001 --gid dialout --no-create-home \
        --home-dir /var/lib/nebuliser --shell /usr/sbin/nologin nebuliser \
    && install -d -o nebuliser -g dialout -m 0750 /var/lib/nebuliser /etc/nebuliser
COPY --from=build /opt/nebuliser /opt/nebuliser
COPY config /usr/share/nebuliser/config
ENV PATH=/opt/nebuliser/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NEBULISER_STORAGE__DATA_DIR=/var/lib/nebuliser
# Numeric (user nebuliser, group dialout) so that runtimes can verify "not root".
USER 10001:20
WORKDIR /var/lib/nebuliser
VOLUME ["/var/lib/nebuliser"]
# Healthy = the controller itself answers on its control socket (not just "the process
# exists"): `session status` exits 0 when it answers, 6 when it does not (docs/cli.md);
# Docker counts any non-zero exit as a failed check. Its output lands in the health log.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["nebuliser", "session", "status", "--config", "/etc/nebuliser/controller.toml"]
ENTRYPOINT ["nebuliser"]
CMD ["serve", "--config", "/etc/nebuliser/controller.toml"]
