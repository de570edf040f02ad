# syntax=docker/dockerfile:1
# Build stage: a wheel of omnirelay and its dependencies, with the compilers kept out of the runtime image.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY clients/python ./clients/python
RUN pip install --no-cache-dir --upgrade pip \
 && pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: only the installed package, run as an unprivileged user.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OMNIRELAY_ENV=production
RUN groupadd --system omnirelay && useradd --system --gid omnirelay --home-dir /app --create-home omnirelay
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER omnirelay
WORKDIR /app
# The embedded usage ledger and its spill file (var/usage.db, var/usage-spill.jsonl) must outlive the container.
RUN mkdir -p /app/var
VOLUME ["/app/var"]
EXPOSE 50051
# Prometheus metrics (GET /metrics on the admin listener).
EXPOSE 9464
# The standard grpc.health.v1 service answers this probe (exit 0 only when SERVING).
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s --retries=3 \
  CMD ["omnirelay", "health", "--target", "127.0.0.1:50051", "--timeout", "3"]
# SIGTERM starts a graceful shutdown: NOT_SERVING, drain, then in-flight calls get their grace period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["omnirelay"]
CMD ["serve"]
