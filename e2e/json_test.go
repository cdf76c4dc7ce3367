package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/proc"
)

// postJSON posts body as JSON, as curl -H 'Content-Type: application/json'
// does, and decodes the JSON answer.
func postJSON(t testing.TB, srv *proc.Server, path, authorization, body string) (int, map[string]any, []byte) {
	t.Helper()
	status, raw := post(t, srv, path, "application/json", authorization, strings.NewReader(body))
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("POST %s: answer %q is not JSON: %v", path, raw, err)
	}
	return status, m, raw
}

// TestJSONSyncAsCurl speaks Connect's JSON as a person with curl would:
// 64-bit integers are strings, bytes base64, enums by name.
func TestJSONSyncAsCurl(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	device, backend := "Bearer "+token(t, "alice"), "Bearer "+testBackendKey
	hello := base64.StdEncoding.EncodeToString([]byte("hello, world"))

	status, m, raw := postJSON(t, srv, dalvv1connect.ClientServiceSyncProcedure, device, `{
		"deviceId": "curl",
		"baseVersion": "0",
		"batch": "1",
		"ops": [
			{"kind": "OP_KIND_PUT", "key": "greeting", "value": {"scalar": "`+hello+`"}},
			{"kind": "OP_KIND_LIST_ADD", "key": "tags", "value": {"scalar": "`+base64.StdEncoding.EncodeToString([]byte("x"))+`"}}
		]
	}`)
	if status != http.StatusOK {
		t.Fatalf("Sync: HTTP %d %s", status, raw)
	}
	want := map[string]any{
		"status":  "SYNC_STATUS_ACCEPTED",
		"version": "1",
		"changes": []any{
			map[string]any{"key": "greeting", "value": map[string]any{"scalar": hello}, "version": "1"},
			map[string]any{"key": "tags", "value": map[string]any{"list": map[string]any{"items": []any{"eA=="}}}, "version": "1"},
		},
	}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("Sync answered %s, want %v", raw, want)
	}

	status, m, raw = postJSON(t, srv, dalvv1connect.BackendServiceGetProcedure, backend, `{"user": "alice", "keys": ["greeting", "nope"]}`)
	if status != http.StatusOK {
		t.Fatalf("Get: HTTP %d %s", status, raw)
	}
	want = map[string]any{
		"version": "1",
		"items":   []any{map[string]any{"key": "greeting", "value": map[string]any{"scalar": hello}, "version": "1"}},
	}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("Get answered %s, want %v", raw, want)
	}

	// A conflict is an answer, not an error, with the conflicting keys.
	status, m, raw = postJSON(t, srv, dalvv1connect.ClientServiceSyncProcedure, device,
		`{"deviceId": "other", "batch": "1", "ops": [{"kind": "OP_KIND_DELETE", "key": "greeting"}]}`)
	if status != http.StatusOK || m["status"] != "SYNC_STATUS_CONFLICT" || !reflect.DeepEqual(m["conflicts"], []any{"greeting"}) {
		t.Fatalf("conflicting Sync: HTTP %d %s, want 200 with status SYNC_STATUS_CONFLICT and conflicts [greeting]", status, raw)
	}

	// The 64-bit fields as a JSON number are read too; an erase is a
	// tombstone-free reset.
	if status, _, raw := postJSON(t, srv, dalvv1connect.BackendServiceDeletePartitionProcedure, backend, `{"user": "alice"}`); status != http.StatusOK {
		t.Fatalf("DeletePartition: HTTP %d %s", status, raw)
	}
	status, m, raw = postJSON(t, srv, dalvv1connect.ClientServiceSyncProcedure, device, `{"deviceId": "curl", "baseVersion": 1}`)
	want = map[string]any{"status": "SYNC_STATUS_ACCEPTED", "version": "2", "reset": true, "horizon": "2"}
	if status != http.StatusOK || !reflect.DeepEqual(m, want) {
		t.Fatalf("pull after erase: HTTP %d %s, want %v", status, raw, want)
	}
}

// TestJSONErrorBody checks that a refused JSON request answers Connect's
// error JSON, with the code and a message a person understands, and the
// HTTP status that goes with the code.
func TestJSONErrorBody(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b := backendClient(t, srv)
	device := "Bearer " + token(t, "alice")
	for _, tc := range []struct {
		name       string
		path, auth string
		body       string
		status     int
		code       connect.Code
		words      []string
	}{
		{"system key", dalvv1connect.ClientServiceSyncProcedure, device,
			`{"deviceId": "curl", "batch": "1", "ops": [{"kind": "OP_KIND_PUT", "key": "sys/plan", "value": {"scalar": "cHJv"}}]}`,
			http.StatusForbidden, connect.CodePermissionDenied, []string{`"sys/plan"`, "system-domain"}},
		{"no token", dalvv1connect.ClientServiceSyncProcedure, "",
			`{"deviceId": "curl", "batch": "1", "ops": [{"kind": "OP_KIND_PUT", "key": "a", "value": {"scalar": "cHJv"}}]}`,
			http.StatusUnauthorized, connect.CodeUnauthenticated, []string{"missing bearer token"}},
		{"bad key", dalvv1connect.ClientServiceSyncProcedure, device,
			`{"deviceId": "curl", "batch": "1", "ops": [{"kind": "OP_KIND_PUT", "key": "", "value": {"scalar": "cHJv"}}]}`,
			http.StatusBadRequest, connect.CodeInvalidArgument, []string{"empty key"}},
		{"stale expectedVersion", dalvv1connect.BackendServiceCommitProcedure, "Bearer " + testBackendKey,
			`{"user": "alice", "expectedVersion": "7", "ops": [{"kind": "OP_KIND_PUT", "key": "a", "value": {"scalar": "cHJv"}}]}`,
			http.StatusBadRequest, connect.CodeFailedPrecondition, []string{"expectedVersion is 7", "version 0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := readPartition(t, b, "alice")
			status, m, raw := postJSON(t, srv, tc.path, tc.auth, tc.body)
			if status != tc.status {
				t.Errorf("HTTP status %d, want %d", status, tc.status)
			}
			if got, want := m["code"], tc.code.String(); got != want {
				t.Fatalf("code %v, want %q in %s", got, want, raw)
			}
			msg, _ := m["message"].(string)
			for _, w := range tc.words {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q does not contain %q", msg, w)
				}
			}
			wantPartition(t, b, "alice", before)
		})
	}
}

// TestTransports checks that the same Sync, and its errors, work over the
// Connect protocol with both codecs, gRPC and gRPC-Web.
func TestTransports(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b := backendClient(t, srv)
	for _, tc := range []struct {
		name string
		hc   *http.Client
		opts []connect.ClientOption
	}{
		{"connect-proto", http.DefaultClient, nil},
		{"connect-json", http.DefaultClient, []connect.ClientOption{connect.WithProtoJSON()}},
		{"connect-json-gzip", http.DefaultClient, []connect.ClientOption{connect.WithProtoJSON(), connect.WithSendGzip()}},
		{"grpc", h2cClient(), []connect.ClientOption{connect.WithGRPC()}},
		{"grpc-web", http.DefaultClient, []connect.ClientOption{connect.WithGRPCWeb()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			user := tc.name
			c := dalvv1connect.NewClientServiceClient(tc.hc, srv.URL(), append([]connect.ClientOption{bearer(token(t, user))}, tc.opts...)...)
			bc := dalvv1connect.NewBackendServiceClient(tc.hc, srv.URL(), append([]connect.ClientOption{bearer(testBackendKey)}, tc.opts...)...)
			commit(t, bc, user, opPut("sys/plan", "pro"))
			resp := mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", Batch: 1, Ops: ops(opPut("via", tc.name), opAdd("l", "\x00\xff binary"))})
			want := []string{"sys/plan=pro@1", "via=" + tc.name + "@2", "l=[\x00\xff binary]@2"}
			if got := render(resp.GetChanges()); resp.GetStatus() != accepted || resp.GetVersion() != 2 || !slices.Equal(got, want) {
				t.Fatalf("Sync = status %v version %d changes %q, want %v at 2 with %q", resp.GetStatus(), resp.GetVersion(), got, accepted, want)
			}
			get, err := bc.Get(ctx(t), connect.NewRequest(&dalvv1.GetRequest{User: user, Keys: []string{"via", "l"}}))
			if err != nil {
				t.Fatal(err)
			}
			if got, want := render(get.Msg.GetItems()), want[1:]; !slices.Equal(got, want) {
				t.Fatalf("Get = %q, want %q", got, want)
			}
			refused(t, b, user, func() error {
				_, err := trySync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 2, Batch: 2, Ops: ops(opPut("via", "again"), opPut("sys/plan", "free"))})
				return err
			}, connect.CodePermissionDenied, `"sys/plan"`)
			_, err = trySync(t, dalvv1connect.NewClientServiceClient(tc.hc, srv.URL(), tc.opts...), &dalvv1.SyncRequest{DeviceId: "d"})
			wantError(t, err, connect.CodeUnauthenticated, "missing bearer token")
		})
	}
}

// get fetches path with GET and returns the status and body.
func get(t testing.TB, srv *proc.Server, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx(t), http.MethodGet, srv.URL()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	// No keep-alive: the connection is gone once the answer is read, so
	// it is not counted among the server's open or idle connections.
	req.Close = true
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// scrape reads srv's /metrics.
func scrape(t testing.TB, srv *proc.Server) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := scrapeErr(srv)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// scrapeErr reads srv's /metrics, or says why it could not.
func scrapeErr(srv *proc.Server) (map[string]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL()+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Close = true // not counted among the server's connections afterwards
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET /metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics = %d, want 200", resp.StatusCode)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET /metrics is not Prometheus text: %v", err)
	}
	return fams, nil
}

// metric finds the series of family with labels, or nil.
func metric(fams map[string]*dto.MetricFamily, family string, labels map[string]string) *dto.Metric {
	f := fams[family]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.GetMetric() {
		for k, v := range labels {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == k && lp.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		return m
	}
	return nil
}

// TestHealthzAndMetrics checks GET /healthz and that GET /metrics counts
// what happened.
func TestHealthzAndMetrics(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	if status, body := get(t, srv, "/healthz"); status != http.StatusOK {
		t.Fatalf("GET /healthz = %d %q, want 200", status, body)
	}

	b, c := backendClient(t, srv), deviceClient(t, srv, "alice")
	for i := range 3 {
		mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: uint64(i), Batch: uint64(i + 1), Ops: ops(opPut("k", fmt.Sprint(i)))})
	}
	commit(t, b, "alice", opPut("k", "backend"))
	if resp := mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 3, Batch: 4, Ops: ops(opPut("k", "late"))}); resp.GetStatus() != conflict {
		t.Fatalf("status %v, want %v", resp.GetStatus(), conflict)
	}
	_, err := trySync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 4, Batch: 4, Ops: ops(opPut("sys/x", "1"))})
	wantError(t, err, connect.CodePermissionDenied)

	fams := scrape(t, srv)
	sync := dalvv1connect.ClientServiceSyncProcedure
	for _, tc := range []struct {
		family string
		labels map[string]string
		want   float64
	}{
		{"dalv_requests_total", map[string]string{"procedure": sync, "code": "ok"}, 4},
		{"dalv_requests_total", map[string]string{"procedure": sync, "code": "permission_denied"}, 1},
		{"dalv_requests_total", map[string]string{"procedure": dalvv1connect.BackendServiceCommitProcedure, "code": "ok"}, 1},
		{"dalv_commits_total", map[string]string{"source": "device"}, 3},
		{"dalv_commits_total", map[string]string{"source": "backend"}, 1},
		{"dalv_sync_conflicts_total", nil, 1},
	} {
		m := metric(fams, tc.family, tc.labels)
		if m == nil {
			t.Errorf("no %s%v in /metrics", tc.family, tc.labels)
			continue
		}
		if got := m.GetCounter().GetValue(); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.family, tc.labels, got, tc.want)
		}
	}
	if m := metric(fams, "dalv_request_duration_seconds", map[string]string{"procedure": sync}); m == nil || m.GetHistogram().GetSampleCount() != 5 {
		t.Errorf("dalv_request_duration_seconds{procedure=%q} = %v, want a histogram of 5 requests", sync, m)
	}
	if m := metric(fams, "dalv_store_bytes", nil); m == nil || m.GetGauge().GetValue() <= 0 {
		t.Errorf("dalv_store_bytes = %v, want a positive gauge", m)
	}
	// The embedded store's own: each of the 4 commits waited for a WAL fsync.
	if m := metric(fams, "dalv_pebble_wal_fsync_seconds", nil); m == nil || m.GetHistogram().GetSampleCount() < 4 {
		t.Errorf("dalv_pebble_wal_fsync_seconds = %v, want a histogram of at least 4 fsyncs", m)
	}
	if m := metric(fams, "dalv_pebble_write_stalls_total", nil); m == nil || m.GetCounter().GetValue() != 0 {
		t.Errorf("dalv_pebble_write_stalls_total = %v, want 0", m)
	}
}
