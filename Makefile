# torchwire: every target creates .venv first if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := protos/torchwire/v1/torchwire.proto protos/torchwire/kserve/grpc_predict_v2.proto

.PHONY: venv protos test demo serve lint bench wirecheck clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Regenerates the Python stubs (with .pyi) of the contract.
protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=protos --pyi_out=protos \
		--grpc_python_out=protos $(PROTOS)

# Test files run in parallel, one process per core of CI's two (three measured no faster and
# trained the session fixtures once more); a file's tests stay together to share its fixtures.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The whole tour on the embedded default: a local server, the digits, train, evaluate, predict.
demo: $(STAMP)
	$(BIN)/python -m torchwire.client.demo

# Benchmarks side by side in one run; writes BENCHMARKS.md (5 minutes on 2 cores, 2026-12-06).
bench: $(STAMP)
	$(BIN)/python -m bench

# Triton's own gRPC and HTTP clients against a torchwire server, from a venv of their own:
# tritonclient needs protobuf < 7, which would break this project's stubs if installed beside them.
TRITON_VENV := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed-2.73.0-grpc-http
$(TRITON_STAMP):
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet 'tritonclient[grpc,http]==2.73.0' 'protobuf>=6.30,<7' numpy
	touch $(TRITON_STAMP)

wirecheck: $(STAMP) $(TRITON_STAMP)
	TORCHWIRE_TRITON_PYTHON=$(TRITON_VENV)/bin/python $(BIN)/python -m pytest -q tests/test_v2_triton.py

serve: $(STAMP)
	$(BIN)/torchwire serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check service client tests bench
	$(BIN)/ruff format --check service client tests bench
	$(BIN)/mypy service client

clean:
	rm -rf $(VENV) $(TRITON_VENV) build *.egg-info
