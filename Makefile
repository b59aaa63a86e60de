# atoll — see README.md. Everything runs as root on Debian 12.
SHELL := /bin/bash
GO ?= go
BIN := bin/atoll
# Userspace packages run under the race detector; packages that drive
# BPF programs do too (their Go side is ordinary code).
PKGS := ./...
GENERATED := bpf/*_bpfel.go bpf/*_bpfel.o

.PHONY: all deps generate check-generated build test test-quick fuzz bench run stop lint fmt clean

all: build

deps:
	@./deploy/install-deps.sh

# Rebuild the bpf2go outputs from bpf/*.c (needs clang).
generate: deps
	$(GO) generate ./bpf/

# CI: the committed bpf2go outputs must match the C sources.
check-generated: generate
	@git diff --exit-code --stat -- $(GENERATED) || \
		{ echo "bpf2go outputs are stale: run 'make generate' and commit them"; exit 1; }

build:
	$(GO) build -o $(BIN) ./cmd/atoll

lint:
	@test -z "$$(gofmt -l . | tee /dev/stderr)" || { echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet $(PKGS)
	$(GO) tool staticcheck $(PKGS)

# Every test, as CI runs it, then each fuzz target for a short while.
test: deps check-generated build lint
	$(GO) test -race -count=1 -timeout 30m $(PKGS)
	$(MAKE) fuzz FUZZTIME=10s

# Fuzz targets (seed corpora also run as plain tests).
FUZZTIME ?= 60s
FUZZ_TARGETS := ./userspace/proxy/imap:FuzzCommand ./userspace/proxy/pop3:FuzzCommand \
	./userspace/config:FuzzParse ./bpf/packet:FuzzParse
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "fuzz $$pkg $$fn ($(FUZZTIME))"; \
		$(GO) test -run XXX -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	done

# Inner loop: no generate, no race detector, no lint.
test-quick:
	$(GO) test -count=1 -timeout 10m $(PKGS)

# Benchmarks: BPF_PROG_RUN paths beside the baseline program, Maglev.
bench: deps build
	$(GO) run ./bench -out bench/results

# The main job. Until the lab lands (issue 7) this starts the data plane
# in a small namespace topology and shows real connections through it.
run: deps build
	./$(BIN) demo

stop: build
	./$(BIN) demo -stop

fmt:
	gofmt -w .

clean:
	rm -rf bin
