# Developer targets. The README's test command is `make test` (the Go suites
# with the race detector, then the browser SDK's); CI runs .ci/run, which
# runs exactly it.
GO ?= go
# Recipes that filter a test's output with grep still fail when the test does.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
TOOL = $(GO) tool -modfile=tools/go.mod

.PHONY: all build generate check-generated lint test test-go test-race soak soak-mixed check-history bench bench-postgres fuzz web-deps test-web bundle-size bench-web faults faults-disk faults-network

all: build

build:
	$(GO) build -o bin/dalv ./cmd/dalv

## generate: regenerate gen/ and web/src/gen/ from proto/ (byte for byte what is committed)
generate: web-deps
	$(TOOL) buf lint
	$(TOOL) buf generate

## check-generated: fail if gen/ is stale
check-generated: generate
	git diff --exit-code -- gen/ web/src/gen/
	@test -z "$$(git status --porcelain -- gen/ web/src/gen/)" || (git status --porcelain -- gen/ web/src/gen/; echo "gen/ or web/src/gen/ has untracked files: run make generate and commit"; exit 1)

## lint: gofmt, go vet, staticcheck
lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/'))" || (gofmt -l $$(git ls-files '*.go' | grep -v '^gen/'); exit 1)
	$(GO) vet ./...
	$(TOOL) staticcheck ./...

## test: every test, the README's test command: the Go suites with the race
## detector, then the browser SDK's suite (Node and headless Chromium)
test: test-go test-web

## test-go: the Go suites (unit, conformance, end to end, crash loop, fuzz seeds)
test-go:
	$(GO) test -race -count=1 ./...
	@$(GO) run ./internal/pgtest/citusstatus

test-race:
	$(GO) test -race ./...

## soak: the long crash loop (200 kills)
soak:
	DALV_CRASH_KILLS=200 $(GO) test -run TestCrashDurability -count=1 -timeout 60m ./e2e/

## check-history: devices and backends on one node and on three over PostgreSQL for a minute
## each, every call checked against the sync rules by internal/history (Porcupine); the Go
## suite runs the same for 3 s
check-history:
	DALV_HISTORY_SECONDS=$${DALV_HISTORY_SECONDS:-60} $(GO) test -count=1 -run '^TestHistory' -v -timeout 30m ./e2e/ | grep -E '^(=== RUN|--- |ok|FAIL)|^ +[a-z_]+_test\.go:[0-9]+: '

## soak-mixed: an hour (DALV_SOAK_MINUTES) of devices, backends, a feed reader and
## device watches on one node and on three over PostgreSQL, a fault every few
## minutes, each server's goroutines, memory and open files logged every minute
## and checked for growth, every call checked by the history checker; make test
## runs it for 2 minutes
soak-mixed:
	DALV_SOAK_MINUTES=$${DALV_SOAK_MINUTES:-60} $(GO) test -count=1 -v -run '^TestSoakMixed$$' -timeout 3h ./e2e/ | grep -E '^(=== RUN|--- |ok|FAIL)|^ +[a-z_]+_test\.go:[0-9]+: '

## faults: every fault-injection suite, printing what each injected and
## survived (make test runs each once, briefly)
faults: faults-disk faults-network

## faults-disk: disk faults, DALV_DISK_FAULT_ROUNDS rounds of each kind
## (default 5): dalv serve's WAL writes and fsyncs failing and its disk
## full (injected through Pebble's errorfs), the embedded store's own, the
## Go SDK's replica file on a full disk, and its subscriber queue bound
faults-disk:
	@echo "== disk faults: dalv serve (wal-write, wal-sync, enospc), $${DALV_DISK_FAULT_ROUNDS:-5} rounds each"
	DALV_DISK_FAULT_ROUNDS=$${DALV_DISK_FAULT_ROUNDS:-5} $(GO) test -race -count=1 -v -run '^TestDiskFaultServer$$' ./e2e/
	@echo "== disk faults: the embedded store (wal-write, wal-sync, enospc under four writers)"
	$(GO) test -race -count=1 -v -run '^TestDiskFaultStopsAcknowledging$$' ./store/pebble/
	@echo "== disk faults: the Go SDK's replica file on a full disk; its subscriber queue bound"
	$(GO) test -race -count=1 -v -run '^(TestReplicaDiskFull|TestSubscriberQueueOverflow)$$' ./client/

## faults-network: three nodes over a PostgreSQL of the test's own while the
## network to it is cut and black-holed and the server is killed (-m
## immediate), every call checked by the history checker, for
## DALV_HISTORY_SECONDS (default 60)
faults-network:
	@echo "== network faults: connection cuts, black holes past the statement timeout, PostgreSQL killed"
	DALV_HISTORY_SECONDS=$${DALV_HISTORY_SECONDS:-60} $(GO) test -count=1 -v -run '^TestHistoryPostgresFaults$$' -timeout 30m ./e2e/ | grep -E '^(=== RUN|--- |ok|FAIL)|^ +[a-z_]+_test\.go:[0-9]+: '

## fuzz: each fuzz target for a minute
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzValidateOps$$' -fuzztime 60s ./value/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeCursor$$' -fuzztime 60s ./engine/
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 60s ./value/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeEntry$$' -fuzztime 60s ./store/pebble/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeFeedRecord$$' -fuzztime 60s ./store/pebble/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeHead$$' -fuzztime 60s ./store/pebble/
	$(GO) test -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime 60s ./auth/
	$(GO) test -run '^$$' -fuzz '^FuzzBearerToken$$' -fuzztime 60s ./auth/
	$(GO) test -run '^$$' -fuzz '^FuzzVerifyPublicKey$$' -fuzztime 60s ./auth/
	$(GO) test -run '^$$' -fuzz '^FuzzParseJWKS$$' -fuzztime 60s ./auth/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 60s ./rules/
	$(GO) test -run '^$$' -fuzz '^FuzzCheck$$' -fuzztime 60s ./rules/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeKeys$$' -fuzztime 60s ./store/pebble/
	$(GO) test -run '^$$' -fuzz '^FuzzOpenReplicaFile$$' -fuzztime 60s ./client/
	$(GO) test -run '^$$' -fuzz '^FuzzPartID$$' -fuzztime 60s ./store/postgres/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodePos$$' -fuzztime 60s ./store/postgres/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodePageToken$$' -fuzztime 60s ./engine/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRecords$$' -fuzztime 60s ./client/
	$(GO) test -run '^$$' -fuzz '^FuzzHandler$$' -fuzztime 60s ./server/
	$(GO) test -run '^$$' -fuzz '^FuzzStream$$' -fuzztime 60s ./server/

## bench: the server benchmark (medians of 5 runs)
bench: build
	./bin/dalv bench --runs 5

## bench-postgres: 1 and 3 nodes over PostgreSQL beside pgbench (medians of 5 runs);
## the database is $DALV_TEST_POSTGRES, or the machine's PostgreSQL
bench-postgres: build
	./bin/dalv bench --store "$${DALV_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}" --runs 5

## web-deps: install the browser SDK's npm packages (pinned by web/package-lock.json) when missing
web-deps:
	@test -x web/node_modules/.bin/protoc-gen-es || npm ci --prefix web

## test-web: the browser SDK's suite: type-check, build, unit tests in Node, browser tests in Chromium
test-web: web-deps build
	npm run --prefix web typecheck
	npm run --prefix web build
	npm run --prefix web test:unit
	DALV_BIN=$(CURDIR)/bin/dalv npm run --prefix web test:browser

## bundle-size: the minified, gzipped browser SDK with its runtime must stay within its budget
bundle-size: web-deps
	npm run --prefix web build
	node web/scripts/bundle-size.mjs

## bench-web: the browser SDK's figures in headless Chromium (medians of 3 runs)
bench-web: web-deps build
	npm run --prefix web build
	DALV_BIN=$(CURDIR)/bin/dalv node web/scripts/bench.mjs
