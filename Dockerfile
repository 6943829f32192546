# An image that serves the Bento (service code + model) as a non-root user.
#
#   make docker-context          # bentoml build + bentoml export -> build/image_classifier.bento
#   docker build -t image-classifier .                                # CPU, without torch (ONNX Runtime engines)
#   docker build --build-arg TORCH=cpu -t image-classifier:torch .    # CPU with torch: /v1/explain, the torch engine
#   docker build --build-arg TORCH=cuda -t image-classifier:cuda .    # GPU (torch's CUDA build, from PyPI)
#   docker run --rm -p 3000:3000 image-classifier
#   docker run --rm --gpus all -p 3000:3000 image-classifier:cuda     (needs the NVIDIA container toolkit)
#
# PYTHON_IMAGE may be any Debian-like image with Python 3.11 and its venv module; where no registry can be reached,
# deploy/container/base-image.sh makes one with debootstrap. BENTOML_PORT sets the port (3000).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Stage 1: unpack the exported Bento into a BentoML store.
FROM ${PYTHON_IMAGE} AS bento
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 BENTOML_HOME=/opt/bentoml BENTOML_DO_NOT_TRACK=true \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv && pip install "bentoml==1.4.30"
COPY build/image_classifier.bento /tmp/image_classifier.bento
RUN bentoml import /tmp/image_classifier.bento \
    && cp /opt/bentoml/bentos/image_classifier/*/env/python/requirements.txt /opt/requirements.txt

# Stage 2: the runtime, without the archive or build tools. TORCH: none (the CPU image), cpu or cuda.
FROM ${PYTHON_IMAGE}
ARG TORCH=none
ARG TORCH_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH \
    BENTOML_HOME=/home/app/bentoml BENTOML_DO_NOT_TRACK=true BENTOML_PORT=3000
RUN groupadd --gid 10001 app && useradd --uid 10001 --gid 10001 --create-home app
COPY --from=bento /opt/requirements.txt /tmp/requirements.txt
# torch first (cpu: PyTorch's CPU-only wheels; cuda: PyPI's, which are CUDA builds), then the requirements.
RUN case "${TORCH}" in \
      none) [ -z "${TORCH_INDEX_URL}" ] || { echo "TORCH_INDEX_URL needs TORCH=cpu or cuda" >&2; exit 1; } ;; \
      cpu) index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;; \
      cuda) index="${TORCH_INDEX_URL:-https://pypi.org/simple}" ;; \
      *) echo "TORCH=${TORCH}: choose none, cpu or cuda" >&2; exit 1 ;; \
    esac \
    && python3 -m venv /opt/venv \
    && if [ "${TORCH}" != none ]; then \
         pip install --index-url "${index}" "torch==2.14.1" "torchvision==0.29.1" \
         && pip install "captum>=0.8" "matplotlib>=3.8"; \
       fi \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY --from=bento --chown=10001:10001 /opt/bentoml /home/app/bentoml
USER 10001:10001
WORKDIR /home/app
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('BENTOML_PORT', '3000'), timeout=4)"]
CMD ["bentoml", "serve", "image_classifier:latest", "--host", "0.0.0.0"]
