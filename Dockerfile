# An image that serves the Bento (service code + model) as a non-root user, CPU by default.
#
#   make docker-context          # bentoml build + bentoml export -> build/image_classifier.bento
#   docker build -t image-classifier .
#   docker run --rm -p 3000:3000 image-classifier
#
# CUDA: docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t image-classifier:cuda .
#       docker run --rm --gpus all -p 3000:3000 image-classifier:cuda   (needs the NVIDIA container toolkit)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Stage 1: unpack the exported Bento into a BentoML store.
FROM ${PYTHON_IMAGE} AS bento
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 BENTOML_HOME=/opt/bentoml BENTOML_DO_NOT_TRACK=true
RUN pip install "bentoml==1.4.30"
COPY build/image_classifier.bento /tmp/image_classifier.bento
RUN bentoml import /tmp/image_classifier.bento \
    && cp /opt/bentoml/bentos/image_classifier/*/env/python/requirements.txt /opt/requirements.txt

# Stage 2: the runtime, without the archive or build tools.
FROM ${PYTHON_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BENTOML_HOME=/home/app/bentoml BENTOML_DO_NOT_TRACK=true
RUN groupadd --gid 10001 app && useradd --uid 10001 --gid 10001 --create-home app
COPY --from=bento /opt/requirements.txt /tmp/requirements.txt
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==2.14.1" "torchvision==0.29.1" \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY --from=bento --chown=10001:10001 /opt/bentoml /home/app/bentoml
USER 10001:10001
WORKDIR /home/app
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=4)"]
CMD ["bentoml", "serve", "image_classifier:latest", "--host", "0.0.0.0", "--port", "3000"]
