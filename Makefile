# keyfleet: `make run` and `make test` do all the set-up on a Debian machine with Go.
GO       ?= go
FUZZTIME ?= 30s
PKGS     := ./...

.PHONY: all build agents run test bench chaos fuzz lint deps clean

all: build

deps:
	@scripts/deps.sh --with-mosquitto --with-promtool --with-chromium --with-systemd --with-postgres --with-tpm

build:
	@# -buildvcs=auto: --version names the commit even where GOFLAGS turns stamping off
	$(GO) build -buildvcs=auto -o bin/ ./cmd/...

## agents: fleet-agent for ARM boards, static and stripped: bin/fleet-agent-linux-arm64, bin/fleet-agent-linux-armv7 (GOARM=7)
agents:
	@GO=$(GO) scripts/agents.sh bin

## run: fleetd + embedded broker + SoftHSM2 + five agents, a staged identity campaign every 15 s
run: build
	@scripts/deps.sh
	@scripts/run.sh

## test: every test, with the race detector, on real SoftHSM2, brokers, bbolt and PostgreSQL
test: deps
	$(GO) vet $(PKGS)
	$(GO) test -race -timeout 15m $(PKGS)

## bench: Go benchmarks, raw HSM rates and 10k-device rotations in one run (bench/results/)
bench: deps build
	@scripts/bench.sh

## chaos: a 10k-device rotation with crashes, offline devices and flapping links
chaos: deps build
	@scripts/chaos.sh

## fuzz: run every fuzz target for FUZZTIME each
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$t"; $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet $(PKGS)

clean:
	rm -rf bin
