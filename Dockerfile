# kvstore node image. With internet:   docker build -t kvstore .
# With no registry and no network in the build (see docs/docker.md):
#   scripts/docker_build.sh offline
#   = docker build --network none --build-arg BASE_IMAGE=kvstore-base:bookworm \
#                  --build-arg WHEELS=build/docker-wheels -t kvstore .
ARG BASE_IMAGE=python:3.11-slim

# ---- build: a venv with kvstore and its pinned dependencies --------------------------
FROM ${BASE_IMAGE} AS build
# Lets scripts/docker_cluster.sh and the e2e tests remove the dangling images builds leave.
LABEL kvstore.build=1
# A directory in the build context holding pre-downloaded wheels. When it holds any, pip
# installs from it alone (--no-index); by default it names a directory with no wheels and
# pip uses PyPI.
ARG WHEELS=requirements
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
COPY ${WHEELS}/ /wheels/
COPY requirements/docker.lock requirements/docker-build.lock /src/requirements/
RUN python3 -m venv /opt/kvstore \
 && if ls /wheels/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /wheels; fi \
 && /opt/kvstore/bin/pip install --no-deps "$@" -r /src/requirements/docker.lock \
 && /opt/kvstore/bin/pip check
COPY pyproject.toml README.md /src/
COPY kvstore /src/kvstore
RUN if ls /wheels/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /wheels; fi \
 && PIP_CONSTRAINT=/src/requirements/docker-build.lock \
    /opt/kvstore/bin/pip install --no-deps "$@" /src \
 && { /opt/kvstore/bin/pip check \
      || { echo "requirements/docker.lock is stale: run scripts/docker_build.sh lock" >&2; \
           exit 1; }; } \
 && /opt/kvstore/bin/pip uninstall --yes --quiet pip \
 && /opt/kvstore/bin/kv --version

# ---- runtime: the venv on a clean base, as a non-root user ----------------------------
FROM ${BASE_IMAGE}
LABEL kvstore.build=1
RUN groupadd --system --gid 10001 kv \
 && useradd --system --uid 10001 --gid kv --home-dir /data --no-create-home \
            --shell /usr/sbin/nologin kv \
 && mkdir /data && chown kv:kv /data
# Metadata first, the venv last: a source change then rebuilds only the final COPY.
ENV PATH=/opt/kvstore/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    KV_LISTEN=0.0.0.0:7001 \
    KV_DATA_DIR=/data
USER kv
VOLUME ["/data"]
EXPOSE 7001
# Really asks the node: the standard grpc.health.v1 service on the port it listens on
# (SERVING once the node knows its cluster's membership). The node stops cleanly on
# SIGTERM, docker's default stop signal.
HEALTHCHECK --interval=5s --timeout=10s --start-period=60s --retries=3 \
    CMD kv node health --timeout 3 --endpoint "127.0.0.1:${KV_LISTEN##*:}" || exit 1
CMD ["kv", "node", "start"]
COPY --from=build /opt/kvstore /opt/kvstore
