package bench

import (
	"context"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
)

// keyRecorder is a ClientServiceClient whose Sync accepts every batch and
// records the key it PUTs.
type keyRecorder struct {
	dalvv1connect.ClientServiceClient
	keys []string
}

func (r *keyRecorder) Sync(_ context.Context, req *connect.Request[dalvv1.SyncRequest]) (*connect.Response[dalvv1.SyncResponse], error) {
	r.keys = append(r.keys, req.Msg.GetOps()[0].GetKey())
	return connect.NewResponse(&dalvv1.SyncResponse{Status: dalvv1.SyncStatus_SYNC_STATUS_ACCEPTED, Version: req.Msg.GetBatch()}), nil
}

// TestDeviceKeys checks that a device PUTs its one key, or with keys above
// one cycles over that many keys of its own.
func TestDeviceKeys(t *testing.T) {
	t.Parallel()
	s := secrets{secret: make([]byte, 32), key: "k"}
	for _, tc := range []struct {
		keys int
		want []string
	}{
		{1, []string{"bench/d", "bench/d", "bench/d", "bench/d"}},
		{3, []string{"bench/d/1", "bench/d/2", "bench/d/0", "bench/d/1"}},
	} {
		rec := &keyRecorder{}
		d, err := s.newDevice(&clients{device: rec}, "u", "d", 8, tc.keys)
		if err != nil {
			t.Fatal(err)
		}
		for range len(tc.want) {
			if err := d.sync(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		if !slices.Equal(rec.keys, tc.want) {
			t.Errorf("keys %d: device PUT %q, want %q", tc.keys, rec.keys, tc.want)
		}
	}
}

// slowRecorder is a keyRecorder that takes a few milliseconds to answer,
// as a server does.
type slowRecorder struct{ keyRecorder }

func (r *slowRecorder) Sync(ctx context.Context, req *connect.Request[dalvv1.SyncRequest]) (*connect.Response[dalvv1.SyncResponse], error) {
	time.Sleep(2 * time.Millisecond) // the server's latency, not a synchronisation
	return r.keyRecorder.Sync(ctx, req)
}

// TestLoadWarmsUntilGrown runs a load of devices that cycle over keys with
// a warm-up far shorter than their first cycle: the measurement starts only
// once each device has PUT each of its keys.
func TestLoadWarmsUntilGrown(t *testing.T) {
	t.Parallel()
	const devices, keys = 3, 10
	s := secrets{secret: make([]byte, 32), key: "k"}
	g := &growth{}
	recs := make([]*slowRecorder, devices)
	workers := make([]call, devices)
	for i := range workers {
		recs[i] = &slowRecorder{}
		d, err := s.newDevice(&clients{device: recs[i]}, "u", fmt.Sprint("d", i), 8, keys)
		if err != nil {
			t.Fatal(err)
		}
		g.add(d)
		workers[i] = d.sync
	}
	m := &meter{out: io.Discard, warmup: time.Millisecond, duration: 50 * time.Millisecond, mon: startMonitor()}
	res, err := m.load(context.Background(), loadSpec{label: "grow", unit: "syncs/s", workers: workers, grown: g.grown})
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, r := range recs {
		total += len(r.keys)
	}
	// A call in flight as the measurement starts is counted in it.
	if most := total - devices*(keys-1); int(res.calls) > most || res.calls == 0 {
		t.Errorf("%d of %d calls measured, want 1 to %d: the warm-up ended before every device had PUT its %d keys", res.calls, total, most, keys)
	}
}
