package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/internal/wait"
)

// post sends body to path as one HTTP request, as curl would, and returns
// the status and the body of the answer.
func post(t testing.TB, srv *proc.Server, path, contentType, authorization string, body io.Reader) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx(t), http.MethodPost, srv.URL()+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST %s: read answer: %v", path, err)
	}
	return resp.StatusCode, b
}

// connectError decodes the JSON error body of the Connect protocol.
func connectError(t testing.TB, body []byte) (code, message string) {
	t.Helper()
	var e struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("error body %q is not Connect's JSON error: %v", body, err)
	}
	return e.Code, e.Message
}

// wantRawError checks a raw HTTP answer is a Connect error with code whose
// message contains words.
func wantRawError(t testing.TB, status int, body []byte, code connect.Code, words ...string) {
	t.Helper()
	got, msg := connectError(t, body)
	if got != code.String() {
		t.Fatalf("HTTP %d, code %q (%s), want %q", status, got, msg, code)
	}
	for _, w := range words {
		if !strings.Contains(msg, w) {
			t.Errorf("message %q does not contain %q", msg, w)
		}
	}
}

// chunked hides a body's length, so the server cannot refuse it by its
// Content-Length and has to count while reading.
type chunked struct{ r io.Reader }

func (c chunked) Read(p []byte) (int, error) { return c.r.Read(p) }

// TestLimits checks every configured limit: past it, resource_exhausted
// with the limit named, and nothing applied.
func TestLimits(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "--max-key-bytes", "64", "--max-value-bytes", "1024", "--max-ops", "10",
		"--max-response-bytes", "4096", "--max-request-bytes", "16384")
	b := backendClient(t, srv)

	// Each case sends its ops as a device sync and as a backend commit, at
	// base 1 over a partition holding ok=1 and l=[600 bytes].
	big := func(n int) string { return strings.Repeat("v", n) }
	for _, tc := range []struct {
		name  string
		ops   []*dalvv1.Op
		words []string
	}{
		{"key", ops(opPut(strings.Repeat("k", 65), "1")), []string{"65 bytes", "key limit of 64 bytes", "--max-key-bytes"}},
		{"PUT value", ops(opPut("v", big(1025))), []string{"1025 bytes", "value limit of 1024 bytes", "--max-value-bytes"}},
		{"PUT list", ops(opPutList("v", big(600), big(425))), []string{"1025 bytes", "--max-value-bytes"}},
		{"LIST_ADD element", ops(opAdd("l2", big(1025))), []string{"1025 bytes", "--max-value-bytes"}},
		{"LIST_ADD growing a list", ops(opAdd("l", "x"+big(424))), []string{`"l"`, "1025 bytes", "--max-value-bytes"}},
		{"ops", ops(opPut("a", "1"), opPut("b", "1"), opPut("c", "1"), opPut("d", "1"), opPut("e", "1"), opPut("f", "1"),
			opPut("g", "1"), opPut("h", "1"), opPut("i", "1"), opPut("j", "1")), []string{"11 ops", "limit of 10", "--max-ops"}}, // with ok=2
		{"changes past one answer", ops(opPut("a", big(1000)), opPut("b", big(1000)), opPut("c", big(1000)), opPut("d", big(1000))), []string{"response limit of 4096 bytes", "--max-response-bytes"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			user := strings.ReplaceAll(tc.name, " ", "-")
			commit(t, b, user, opPut("ok", "1"), opAdd("l", big(600)))
			c := deviceClient(t, srv, user)
			refused(t, b, user, func() error {
				_, err := trySync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 1, Batch: 1, Ops: append(ops(opPut("ok", "2")), tc.ops...)})
				return err
			}, connect.CodeResourceExhausted, tc.words...)
			refused(t, b, user, func() error {
				_, err := b.Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{User: user, Ops: append(ops(opPut("ok", "2")), tc.ops...)}))
				return err
			}, connect.CodeResourceExhausted, tc.words...)
		})
	}

	t.Run("at the limits", func(t *testing.T) {
		t.Parallel()
		c := deviceClient(t, srv, "edge")
		resp := mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", Batch: 1, Ops: ops(
			opPut(strings.Repeat("k", 64), big(1024)), opPutList("l", "a"+big(511), "b"+big(511)),
			opPut("a", "1"), opPut("b", "1"), opPut("c", "1"), opPut("d", "1"), opPut("e", "1"), opPut("f", "1"), opPut("g", "1"), opPut("h", "1"))})
		if got, want := resp.GetVersion(), uint64(1); got != want {
			t.Fatalf("sync at the limits: version %d, want %d", got, want)
		}
	})

	t.Run("request body", func(t *testing.T) {
		t.Parallel()
		c := deviceClient(t, srv, "body")
		mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", Batch: 1, Ops: ops(opPut("ok", "1"))})
		// One 20 KB value is over the request limit before any other.
		huge := &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 1, Batch: 2, Ops: ops(opPut("ok", big(20000)))}
		refused(t, b, "body", func() error {
			_, err := trySync(t, c, huge)
			return err
		}, connect.CodeResourceExhausted, "16384 bytes", "--max-request-bytes")
		for _, proto := range []struct {
			name string
			opt  connect.ClientOption
			hc   *http.Client
		}{
			{"gRPC", connect.WithGRPC(), h2cClient()},
			{"gRPC-Web", connect.WithGRPCWeb(), http.DefaultClient},
		} {
			t.Run(proto.name, func(t *testing.T) {
				c := dalvv1connect.NewClientServiceClient(proto.hc, srv.URL(), bearer(token(t, "body")), proto.opt)
				refused(t, b, "body", func() error {
					_, err := trySync(t, c, huge)
					return err
				}, connect.CodeResourceExhausted, "16384 bytes", "--max-request-bytes")
			})
		}
		t.Run("gzip", func(t *testing.T) {
			// 20 KB of one letter compresses to a few hundred bytes: the
			// limit holds for the message, not only for the wire.
			c := deviceClient(t, srv, "body", connect.WithSendGzip())
			refused(t, b, "body", func() error {
				_, err := trySync(t, c, huge)
				return err
			}, connect.CodeResourceExhausted, "16384", "--max-request-bytes")
		})
		t.Run("length not declared", func(t *testing.T) {
			body, err := json.Marshal(map[string]any{"deviceId": "d", "baseVersion": "1", "batch": "2",
				"ops": []any{map[string]any{"kind": "OP_KIND_PUT", "key": "ok", "value": map[string]any{"scalar": []byte(big(20000))}}}})
			if err != nil {
				t.Fatal(err)
			}
			before := readPartition(t, b, "body")
			status, answer := post(t, srv, dalvv1connect.ClientServiceSyncProcedure, "application/json", "Bearer "+token(t, "body"), chunked{bytes.NewReader(body)})
			wantRawError(t, status, answer, connect.CodeResourceExhausted, "16384 bytes", "--max-request-bytes")
			wantPartition(t, b, "body", before)
		})
	})

	t.Run("Get keys", func(t *testing.T) {
		t.Parallel()
		keys := make([]string, 11)
		for i := range keys {
			keys[i] = fmt.Sprint("k", i)
		}
		_, err := b.Get(ctx(t), connect.NewRequest(&dalvv1.GetRequest{User: "alice", Keys: keys}))
		wantError(t, err, connect.CodeResourceExhausted, "11 keys", "--max-ops")
	})
}

// TestRateLimit checks the per-user request rate limit: a burst past it is
// refused with resource_exhausted and applies nothing, other users and
// backends are not held back, and the user gets through again later.
func TestRateLimit(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "--rate-limit", "5", "--rate-burst", "5")
	b := backendClient(t, srv)
	alice := deviceClient(t, srv, "alice")

	const n = 20
	var applied []string
	start := time.Now()
	for i := 1; i <= n; i++ {
		elem := fmt.Sprint(i)
		_, err := trySync(t, alice, &dalvv1.SyncRequest{DeviceId: "d", Batch: uint64(i), Ops: ops(opAdd("l", elem))})
		switch codeOf(err) {
		case "ok":
			applied = append(applied, elem)
		case connect.CodeResourceExhausted.String():
			wantError(t, err, connect.CodeResourceExhausted, `"alice"`, "rate limit", "--rate-limit")
		default:
			t.Fatalf("request %d: %v, want ok or resource_exhausted", i, err)
		}
		if i <= 5 && len(applied) != i {
			t.Fatalf("request %d of the burst of 5 was refused", i)
		}
	}
	elapsed := time.Since(start)
	// The bucket holds 5 and refills 5 a second: no more can pass.
	if most := 5 + int(5*elapsed.Seconds()); len(applied) > most {
		t.Fatalf("%d of %d requests passed in %v, want at most %d", len(applied), n, elapsed, most)
	}
	if len(applied) == n {
		t.Fatalf("all %d requests passed in %v, want some refused", n, elapsed)
	}
	wantPartition(t, b, "alice", partition{uint64(len(applied)), []string{fmt.Sprintf("l=[%s]@%d", strings.Join(applied, " "), len(applied))}})

	// Another user is not held back, nor is the backend.
	if _, err := trySync(t, deviceClient(t, srv, "bob"), &dalvv1.SyncRequest{DeviceId: "d"}); err != nil {
		t.Fatalf("bob's first request: %v", err)
	}
	for range 10 {
		readPartition(t, b, "alice")
	}
	// The bucket refills.
	wait.ForEvery(t, 5*time.Second, 100*time.Millisecond, func() error {
		_, err := trySync(t, alice, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: uint64(len(applied))})
		return err
	})
}

// rawSyncProto builds a SyncRequest in protobuf by hand: device "d", base
// 1, batch 2, a PUT ok=1, then a PUT of key, which may be invalid UTF-8 (the
// generated code would refuse to encode it).
func rawSyncProto(key string) []byte {
	put := func(key, val string) []byte {
		v := protowire.AppendTag(nil, 1, protowire.BytesType)
		v = protowire.AppendString(v, val)
		op := protowire.AppendTag(nil, 1, protowire.VarintType)
		op = protowire.AppendVarint(op, uint64(dalvv1.OpKind_OP_KIND_PUT))
		op = protowire.AppendTag(op, 2, protowire.BytesType)
		op = protowire.AppendString(op, key)
		op = protowire.AppendTag(op, 3, protowire.BytesType)
		return protowire.AppendBytes(op, v)
	}
	b := protowire.AppendTag(nil, 1, protowire.BytesType)
	b = protowire.AppendString(b, "d")
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	b = protowire.AppendVarint(b, 1)
	b = protowire.AppendTag(b, 3, protowire.VarintType)
	b = protowire.AppendVarint(b, 2)
	for _, op := range [][]byte{put("ok", "1"), put(key, "1")} {
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendBytes(b, op)
	}
	return b
}

// TestMalformedRequests checks that malformed input is invalid_argument with
// a message a person can act on, and applies nothing.
func TestMalformedRequests(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b, c := backendClient(t, srv), deviceClient(t, srv, "alice")
	mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", Batch: 1, Ops: ops(opPut("ok", "0"), opAdd("l", "x"))})

	for _, tc := range []struct {
		name  string
		op    *dalvv1.Op
		words []string
	}{
		{"empty key", opPut("", "1"), []string{"empty key"}},
		{"control character in key", opPut("a\x01b", "1"), []string{"control character", "U+0001"}},
		{"newline in key", opPut("a\nb", "1"), []string{"control character", "U+000A"}},
		{"C1 control in key", opPut("a\u0085b", "1"), []string{"control character", "U+0085"}},
		{"unspecified op kind", &dalvv1.Op{Key: "k", Value: scalar("1")}, []string{`"k"`, "OP_KIND_UNSPECIFIED", "PUT, DELETE, LIST_ADD or LIST_REMOVE"}},
		{"unknown op kind", &dalvv1.Op{Kind: 99, Key: "k", Value: scalar("1")}, []string{`"k"`, "99", "PUT, DELETE, LIST_ADD or LIST_REMOVE"}},
		{"PUT without value", &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: "k"}, []string{`PUT "k"`, "no value"}},
		{"PUT with an empty Value", &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: "k", Value: &dalvv1.Value{}}, []string{`PUT "k"`, "no value"}},
		{"DELETE with value", &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_DELETE, Key: "ok", Value: scalar("1")}, []string{`DELETE "ok"`, "value"}},
		{"LIST_ADD with a list", &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_LIST_ADD, Key: "l", Value: list("y")}, []string{`LIST_ADD "l"`, "value.scalar"}},
		{"LIST_ADD without value", &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_LIST_ADD, Key: "l"}, []string{`LIST_ADD "l"`, "value.scalar"}},
		{"LIST_REMOVE with a list", &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_LIST_REMOVE, Key: "l", Value: list("x")}, []string{`LIST_REMOVE "l"`, "value.scalar"}},
		{"list PUT with duplicates", opPutList("l", "a", "b", "a"), []string{`PUT "l"`, "items 0 and 2 are equal"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			words := append([]string{"op 1"}, tc.words...)
			refused(t, b, "alice", func() error {
				_, err := trySync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 1, Batch: 2, Ops: ops(opPut("ok", "1"), tc.op)})
				return err
			}, connect.CodeInvalidArgument, words...)
			refused(t, b, "alice", func() error {
				_, err := b.Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{User: "alice", Ops: ops(opPut("ok", "1"), tc.op)}))
				return err
			}, connect.CodeInvalidArgument, words...)
		})
	}

	t.Run("missing deviceId", func(t *testing.T) {
		refused(t, b, "alice", func() error {
			_, err := trySync(t, c, &dalvv1.SyncRequest{BaseVersion: 1, Batch: 2, Ops: ops(opPut("ok", "1"))})
			return err
		}, connect.CodeInvalidArgument, "deviceId")
		_, err := trySync(t, c, &dalvv1.SyncRequest{})
		wantError(t, err, connect.CodeInvalidArgument, "deviceId")
	})
	t.Run("deviceId too long", func(t *testing.T) {
		refused(t, b, "alice", func() error {
			_, err := trySync(t, c, &dalvv1.SyncRequest{DeviceId: strings.Repeat("d", 129), BaseVersion: 1, Batch: 2, Ops: ops(opPut("ok", "1"))})
			return err
		}, connect.CodeInvalidArgument, "deviceId", "129 bytes")
	})

	auth := "Bearer " + token(t, "alice")
	for _, tc := range []struct {
		name        string
		contentType string
		body        []byte
		words       []string
	}{
		{"invalid UTF-8 key", "application/proto", rawSyncProto("bad\xffkey"), []string{"UTF-8"}},
		{"malformed protobuf", "application/proto", []byte{0x0a, 0xff, 0x01, 0x02}, []string{"unmarshal"}},
		{"malformed JSON", "application/json", []byte(`{"deviceId": "d", "batch": "2", "ops": [{"kind": "OP_KIND_PUT", "key": "ok"`), []string{"unmarshal"}},
		{"JSON with a wrong type", "application/json", []byte(`{"deviceId": "d", "batch": "two"}`), []string{"unmarshal", "batch"}},
		// Connect's JSON codec drops enum names it does not know.
		{"JSON with an unknown op kind name", "application/json", []byte(`{"deviceId": "d", "batch": "2", "ops": [{"kind": "OP_KIND_UPSERT", "key": "ok"}]}`), []string{"op 0", `"ok"`, "PUT, DELETE, LIST_ADD or LIST_REMOVE"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := readPartition(t, b, "alice")
			status, body := post(t, srv, dalvv1connect.ClientServiceSyncProcedure, tc.contentType, auth, bytes.NewReader(tc.body))
			if status != http.StatusBadRequest {
				t.Errorf("HTTP status %d, want %d", status, http.StatusBadRequest)
			}
			wantRawError(t, status, body, connect.CodeInvalidArgument, tc.words...)
			wantPartition(t, b, "alice", before)
		})
	}
	// The raw request is well formed apart from its key.
	status, body := post(t, srv, dalvv1connect.ClientServiceSyncProcedure, "application/proto", auth, bytes.NewReader(rawSyncProto("good/key")))
	if status != http.StatusOK {
		t.Fatalf("hand-built request with a valid key: HTTP %d %s", status, body)
	}
	wantPartition(t, b, "alice", partition{2, []string{"good/key=1@2", "l=[x]@1", "ok=1@2"}})
}
