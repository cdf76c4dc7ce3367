# Developer targets. The README's test command is `go test -race -count=1 ./...`
# (make test-race runs it but reuses cached results); CI runs .ci/run.
GO ?= go
TOOL = $(GO) tool -modfile=tools/go.mod

.PHONY: all build generate check-generated lint test test-race soak bench bench-postgres fuzz

all: build

build:
	$(GO) build -o bin/dalv ./cmd/dalv

## generate: regenerate gen/ from proto/ (byte for byte what is committed)
generate:
	$(TOOL) buf lint
	$(TOOL) buf generate

## check-generated: fail if gen/ is stale
check-generated: generate
	git diff --exit-code -- gen/
	@test -z "$$(git status --porcelain -- gen/)" || (git status --porcelain -- gen/; echo "gen/ has untracked files: run make generate and commit"; exit 1)

## lint: gofmt, go vet, staticcheck
lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/'))" || (gofmt -l $$(git ls-files '*.go' | grep -v '^gen/'); exit 1)
	$(GO) vet ./...
	$(TOOL) staticcheck ./...

test:
	$(GO) test ./...

test-race:
	$(GO) test -race ./...

## soak: the long crash loop (200 kills)
soak:
	DALV_CRASH_KILLS=200 $(GO) test -run TestCrashDurability -count=1 -timeout 60m ./e2e/

## fuzz: each fuzz target for a minute
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzValidateOps$$' -fuzztime 60s ./value/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeCursor$$' -fuzztime 60s ./engine/
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 60s ./value/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeEntry$$' -fuzztime 60s ./store/pebble/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeFeedRecord$$' -fuzztime 60s ./store/pebble/
	$(GO) test -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime 60s ./auth/
	$(GO) test -run '^$$' -fuzz '^FuzzBearerToken$$' -fuzztime 60s ./auth/
	$(GO) test -run '^$$' -fuzz '^FuzzVerifyPublicKey$$' -fuzztime 60s ./auth/
	$(GO) test -run '^$$' -fuzz '^FuzzParseJWKS$$' -fuzztime 60s ./auth/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 60s ./rules/
	$(GO) test -run '^$$' -fuzz '^FuzzCheck$$' -fuzztime 60s ./rules/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeKeys$$' -fuzztime 60s ./store/pebble/
	$(GO) test -run '^$$' -fuzz '^FuzzOpenReplicaFile$$' -fuzztime 60s ./client/
	$(GO) test -run '^$$' -fuzz '^FuzzPartID$$' -fuzztime 60s ./store/postgres/

## bench: the server benchmark (medians of 5 runs)
bench: build
	./bin/dalv bench --runs 5

## bench-postgres: 1 and 3 nodes over PostgreSQL beside pgbench (medians of 5 runs);
## the database is $DALV_TEST_POSTGRES, or the machine's PostgreSQL
bench-postgres: build
	./bin/dalv bench --store "$${DALV_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}" --runs 5
