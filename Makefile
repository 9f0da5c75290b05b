# stasis — see README.md. The two commands a new machine needs: `make run`, `make check`.
SHELL := /bin/bash
GO ?= go
# The test guest (kernel + busybox initramfs) is built here, outside the repo.
STASIS_CACHE ?= $(HOME)/.cache/stasis
export STASIS_CACHE
DATA ?= ./.stasis
MNT ?= ./mnt
TEST_TIMEOUT ?= 15m
TEST_DEADLINE ?= 25m
export TEST_TIMEOUT TEST_DEADLINE

.PHONY: all build run check deps fmt-check vet test bench bench-exp microbench clean guest

all: build

build:
	$(GO) build -o bin/ ./cmd/...

## run: build and mount casfs with embedded stores under $(DATA) at $(MNT), in the foreground.
run: build
	@mkdir -p $(DATA) $(MNT)
	./bin/casfs mount --data $(DATA) $(MNT)

## check: install what is missing, then gofmt, go vet and the race-enabled tests.
check: deps fmt-check vet test

deps:
	@scripts/install-deps.sh

guest:
	@scripts/build-guest.sh

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	@echo "gofmt: ok"

vet:
	$(GO) vet ./...

## test: go test -race ./... with a private TMPDIR, a watchdog and a check for leftover mounts/processes.
test:
	@GO=$(GO) scripts/test.sh ./...

## bench: the end-to-end suite (stasis vs local disk, tmpfs, rsync, casync, restic, borg on real
## guest images); rewrites its section of bench/RESULTS.md and bench/plots/*.png.
bench: build
	@scripts/install-deps.sh --bench
	$(GO) run ./bench/e2e -casfs bin/casfs -out bench/RESULTS.md -plots bench/plots $(BENCH_ARGS)

## bench-exp: experiment swapout downtime and swapin time, 1/2/4 QEMU test guests, nodes saved in
## parallel vs one after another (bench/exp); prints a markdown table. BENCH_EXP_ARGS: e.g. -out bench/RESULTS.md.
bench-exp: build
	$(GO) run ./bench/exp -casfs bin/casfs $(BENCH_EXP_ARGS)

## microbench: the packages' go test benchmarks (chunkers, codec, blockd, metad, casfs).
microbench:
	$(GO) test -run '^$$' -bench . -benchtime 1x ./...

clean:
	rm -rf bin
