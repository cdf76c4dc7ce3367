package bench

import (
	"context"
	"slices"
	"testing"

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
