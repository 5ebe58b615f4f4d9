# Moderation service on a CUDA-capable torch base. Multi-stage: dependencies are installed
# before any project code is copied (that layer is reused until pyproject.toml changes), the
# project is built into a wheel in a throw-away stage, and the runtime runs as a non-root user.
# Built and run by tests/container (podman, on a stand-in torch base: scripts/container_base.sh).
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

FROM ${BASE_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml ./
# runtime + serving dependencies read from pyproject.toml (torch comes with the base image)
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['serve']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt

FROM deps AS build
COPY README.md ./
COPY promptclip/ promptclip/
COPY service/ service/
COPY review/ review/
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

FROM deps AS runtime
ENV PYTHONUNBUFFERED=1 \
    MODERATION_HOST=0.0.0.0 \
    MODERATION_PORT=8000 \
    MODERATION_STORE_DIR=/app/prompts_store \
    MODERATION_REVIEW_DB=sqlite:////home/moderation/review.sqlite3
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl \
 && rm -rf /wheels \
 && useradd --create-home --uid 10001 --shell /usr/sbin/nologin moderation
WORKDIR /app
# demo bundles baked in (readable by the service user: published files may be 0600);
# docker-compose mounts ./prompts_store over them read-only
COPY prompts_store/ /app/prompts_store/
RUN chmod -R a+rX /app/prompts_store
USER 10001
EXPOSE 8000
# probes the port the service listens on (MODERATION_PORT may be overridden at run time)
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('MODERATION_PORT', '8000'); sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:' + port + '/readyz', timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]
