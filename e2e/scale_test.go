package e2e

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/value"
)

// Sizes of TestFirstSync100k: the first sync of a device with 100,000 keys
// works, paged, the partition filled by a backend in commits of the most
// ops allowed.
const (
	scaleKeys      = 100_000
	scaleCommitOps = 1000
	scaleSmallResp = 256 << 10
)

// TestFirstSync100k fills one user's partition with 100,000 keys through the
// backend API, then has a new device pull it from version 0, page by page,
// once at the default 4 MiB response limit and once, after a restart on the
// same data, at 256 KiB. Every key must arrive exactly once with its value,
// no page may pass the limit, and the pull must end at the partition's
// version. DALV_SCALE_SEED fixes the values.
func TestFirstSync100k(t *testing.T) {
	seed := crashSeed(t, "DALV_SCALE_SEED")
	t.Logf("seed %d (replay with DALV_SCALE_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	const user = "scale-user"

	data := filepath.Join(t.TempDir(), "data")
	srv := startServerOn(t, data)
	hc := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(hc.CloseIdleConnections)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	want := make(map[string]string, scaleKeys)
	keys := make([]string, 0, scaleKeys)
	for i := range scaleKeys {
		k := fmt.Sprintf("items/%06d", i)
		v := fmt.Sprintf("v%d-", i)
		for n := 20 + rng.IntN(31); len(v) < n; {
			v += string(rune('a' + rng.IntN(26)))
		}
		keys = append(keys, k)
		want[k] = v
	}
	// Shuffle so key order and version order differ: paging must follow
	// versions, not keys.
	rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })

	bc := dalvv1connect.NewBackendServiceClient(hc, srv.URL(), bearer(testBackendKey))
	start := time.Now()
	var version uint64
	for i := 0; i < len(keys); i += scaleCommitOps {
		ops := make([]*dalvv1.Op, 0, scaleCommitOps)
		for _, k := range keys[i:min(i+scaleCommitOps, len(keys))] {
			ops = append(ops, &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: k, Value: value.Scalar([]byte(want[k]))})
		}
		resp, err := bc.Commit(ctx, connect.NewRequest(&dalvv1.CommitRequest{User: user, Ops: ops}))
		if err != nil {
			t.Fatalf("commit %d: %v", i/scaleCommitOps+1, err)
		}
		if got, want := resp.Msg.GetVersion(), version+1; got != want {
			t.Fatalf("commit %d: version %d, want %d", i/scaleCommitOps+1, got, want)
		}
		version = resp.Msg.GetVersion()
	}
	fill := time.Since(start)
	t.Logf("filled %d keys in %d commits of %d ops in %v (%.0f keys/s)",
		scaleKeys, version, scaleCommitOps, fill.Round(time.Millisecond), scaleKeys/fill.Seconds())

	t.Run("limit=4MiB", func(t *testing.T) {
		scalePull(ctx, t, hc, srv, user, want, version, 4<<20)
	})
	if err := srv.Stop(30 * time.Second); err != nil {
		t.Fatalf("stop: %v\n%s", err, srv.Stderr())
	}
	srv = startServerOn(t, data, "--max-response-bytes", strconv.Itoa(scaleSmallResp), "--max-value-bytes", "65536")
	t.Run("limit=256KiB", func(t *testing.T) {
		scalePull(ctx, t, hc, srv, user, want, version, scaleSmallResp)
	})
}

// scalePull pulls user's partition from version 0 as a new device, pages of
// at most limit bytes, until more is false, and checks it holds want at
// version.
func scalePull(ctx context.Context, t *testing.T, hc *http.Client, srv *proc.Server, user string, want map[string]string, version uint64, limit int) {
	c := dalvv1connect.NewClientServiceClient(hc, srv.URL(), bearer(token(t, user)))
	cfg, err := c.GetConfig(ctx, connect.NewRequest(&dalvv1.GetConfigRequest{}))
	if err != nil {
		t.Fatalf("GetConfig: %v", err)
	}
	if got := int(cfg.Msg.GetMaxResponseBytes()); got != limit {
		t.Fatalf("server's response limit is %d, want %d", got, limit)
	}
	serverBefore := scaleSyncSeconds(t, hc, srv)

	got := make(map[string]string, len(want))
	var (
		base, horizon uint64
		pages, bytes  int
		biggest       int
		wait          time.Duration
	)
	start := time.Now()
	for {
		t0 := time.Now()
		resp, err := c.Sync(ctx, connect.NewRequest(&dalvv1.SyncRequest{DeviceId: "scale-new-device", BaseVersion: base, ResetHorizon: horizon}))
		wait += time.Since(t0)
		if err != nil {
			t.Fatalf("page %d (from version %d): %v", pages+1, base, err)
		}
		m := resp.Msg
		pages++
		size := proto.Size(m)
		bytes += size
		biggest = max(biggest, size)
		if size > limit {
			t.Fatalf("page %d is %d bytes, over the response limit of %d", pages, size, limit)
		}
		if got, want := m.GetStatus(), dalvv1.SyncStatus_SYNC_STATUS_ACCEPTED; got != want {
			t.Fatalf("page %d: status %v, want %v", pages, got, want)
		}
		if m.GetReset_() {
			horizon = m.GetHorizon()
		}
		last := base
		for _, ch := range m.GetChanges() {
			k := ch.GetKey()
			if _, dup := got[k]; dup {
				t.Fatalf("page %d: key %s arrives a second time", pages, k)
			}
			if ch.GetDeleted() {
				t.Fatalf("page %d: key %s arrives as a tombstone", pages, k)
			}
			if v := ch.GetVersion(); v <= base || v > m.GetVersion() || v < last {
				t.Fatalf("page %d from version %d to %d: key %s at version %d, out of order or out of range (previous %d)", pages, base, m.GetVersion(), k, v, last)
			}
			last = ch.GetVersion()
			got[k] = string(ch.GetValue().GetScalar())
		}
		if !m.GetMore() {
			if m.GetVersion() != version {
				t.Fatalf("last page ends at version %d, want the partition's %d", m.GetVersion(), version)
			}
			break
		}
		if m.GetVersion() <= base || len(m.GetChanges()) == 0 {
			t.Fatalf("page %d: more is set but the page moves from version %d to %d with %d changes", pages, base, m.GetVersion(), len(m.GetChanges()))
		}
		base = m.GetVersion()
	}
	took := time.Since(start)
	if len(got) != len(want) {
		t.Fatalf("pulled %d keys, want %d", len(got), len(want))
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			t.Fatalf("key %s = %q (present %v), want %q", k, g, ok, w)
		}
	}
	server := scaleSyncSeconds(t, hc, srv) - serverBefore
	t.Logf("pulled %d keys in %d pages (%.1f MB, biggest page %d of %d bytes) in %v: %v waiting for answers, of which %.3fs in the server's Sync handler; %v decoding and checking in the test",
		len(got), pages, float64(bytes)/1e6, biggest, limit, took.Round(time.Millisecond), wait.Round(time.Millisecond), server, (took - wait).Round(time.Millisecond))
}

// scaleSyncSeconds reads the server's total time spent in Sync handlers
// from /metrics.
func scaleSyncSeconds(t *testing.T, hc *http.Client, srv *proc.Server) float64 {
	t.Helper()
	resp, err := hc.Get(srv.URL() + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	const series = `dalv_request_duration_seconds_sum{procedure="/dalv.v1.ClientService/Sync"} `
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), series); ok {
			f, err := strconv.ParseFloat(rest, 64)
			if err != nil {
				t.Fatalf("/metrics: %q: %v", sc.Text(), err)
			}
			return f
		}
	}
	return 0 // no Sync served yet
}
