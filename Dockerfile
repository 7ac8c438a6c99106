# syntax=docker/dockerfile:1
# The fractalflow server on the CPU, built with no network from the wheels the Makefile makes:
#
#   make wheelhouse                       # wheelhouse/: this project (web UI built in), torch
#                                         # as TORCH_SPEC picks it (the CPU build), every dependency
#   docker build -t fractalflow .         # offline, once the base image is on the machine
#   docker run -p 8000:8000 -e FRACTALFLOW_API_KEY=change-me fractalflow --profile cpu
#
# The wheels are built for the Python of .venv: keep PYTHON_VERSION equal to it (3.11 here).
# One container is one server: one model, one queue, jobs in memory (README, "Several workers").
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1

# the wheels are bound for this step only, so no layer keeps them
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    --mount=type=bind,source=docker/install-wheelhouse.sh,target=/install-wheelhouse.sh \
    sh /install-wheelhouse.sh /wheelhouse python \
    && useradd --create-home --uid 10001 fractalflow

USER fractalflow
WORKDIR /home/fractalflow
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# flags after the image name are serve's (--profile, --model, --config, --browser-model, ...)
ENTRYPOINT ["fractalflow", "serve", "--host", "0.0.0.0", "--port", "8000"]
