# A first cut: serves the trained model with `bentoml serve` as a non-root user.
# Issue #3 turns this into an image built from the Bento, with a CUDA variant.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 BENTOML_HOME=/home/app/bentoml
RUN useradd --create-home app
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
RUN pip install --no-cache-dir . && chown -R app /app
USER app
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz')"
CMD ["bentoml", "serve", "service.service:ImageClassifier", "--port", "3000"]
