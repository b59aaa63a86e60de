# atoll — see README.md. Everything runs as root on Debian 12.
SHELL := /bin/bash
GO ?= go
BIN := bin/atoll
# Userspace packages run under the race detector; packages that drive
# BPF programs do too (their Go side is ordinary code).
PKGS := ./...
GENERATED := bpf/*_bpfel.go bpf/*_bpfel.o

.PHONY: all deps generate check-generated build test test-quick fuzz bench bench-quick run stop lint fmt clean

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
	$(MAKE) fuzz FUZZTIME=100000x

# Fuzz targets (seed corpora also run as plain tests). FUZZTIME is a count
# of executions, not a duration: with a duration, Go 1.26's fuzzing
# coordinator can fail a target with a bare "context deadline exceeded"
# when the time runs out under load (go.dev/issue/75804, fixed in 1.27);
# a count has no deadline to race. Each new interesting input is
# minimized for at most 1,000 runs (the default, 60 s each, made a run on a
# fresh machine's empty fuzz cache stall for most of a minute).
FUZZTIME ?= 1000000x
FUZZ_TARGETS := ./userspace/proxy/imap:FuzzCommand ./userspace/proxy/pop3:FuzzCommand \
	./userspace/config:FuzzParse ./bpf/packet:FuzzParse \
	./userspace/proxy/lmtp:FuzzParseCommand ./userspace/proxy/lmtp:FuzzParseMailArg \
	./userspace/proxy/lmtp:FuzzReadData ./userspace/proxy/lmtp:FuzzReadReply
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "fuzz $$pkg $$fn ($(FUZZTIME))"; \
		$(GO) test -run XXX -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1000x $$pkg || exit 1; \
	done

# Inner loop: no generate, no race detector, no lint.
test-quick:
	$(GO) test -count=1 -timeout 10m $(PKGS)

# Benchmarks (bench/README.md): BPF_PROG_RUN paths beside the baseline
# program, Maglev, atoll against HAProxy, Perdition and nginx end to end in
# namespaces, the LMTP router, the loopback login proxy. Reports land in
# bench/results/<date>.md with PNG charts and JSON beside it.
bench: deps build
	$(GO) run ./bench -out bench/results

# The same, fewer runs and shorter measurements (under five minutes).
bench-quick: deps build
	$(GO) run ./bench -quick -out bench/results

# The main job: the reference deployment in network namespaces (two LB
# hosts with keepalived, two islands of Dovecot nodes, slapd, Postfix, a
# client). Ctrl-C removes it; `make stop` cleans up after a crash.
run: deps build
	./$(BIN) lab

stop: build
	./$(BIN) lab -stop
	./$(BIN) demo -stop

# The small data-plane demo (one LB, two nodes, echo servers).
demo: deps build
	./$(BIN) demo

# The reference deployment's degraded modes as tests (part of `make test`,
# which runs ./...; this runs only them).
test-lab: deps
	$(GO) test -race -count=1 -timeout 20m -v ./deploy/lab/reference/

fmt:
	gofmt -w .

clean:
	rm -rf bin
