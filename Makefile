# Two commands on a fresh machine (see README):
#   make run [DATA=folder] [WEIGHTS=DEFAULT|none|path]   set up, train, then serve
#   make test                                            set up, run the test suite
#   make lint                                            ruff (lint, format) and mypy, as CI runs them
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?=
WEIGHTS ?= DEFAULT
TRAIN_ARGS ?=
PORT ?= 3000

.PHONY: setup run train test lint bento docker-context docker clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

train: setup
	$(BIN)/python -m training $(if $(DATA),--data $(DATA)) --weights $(WEIGHTS) $(TRAIN_ARGS)

run: train
	$(BIN)/bentoml serve service.service:ImageClassifier --port $(PORT)

bento: setup
	$(BIN)/bentoml build

# An absolute path: BentoML resolves a relative one against / (it tried to write /build/...).
docker-context: bento
	mkdir -p build
	$(BIN)/bentoml export image_classifier:latest $(CURDIR)/build/image_classifier.bento

docker: docker-context
	docker build -t image-classifier .

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache runs build
