package bench

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/dalvdb/dalv/auth"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
)

// tokenTTL is how long the bench's device tokens live: longer than any run.
const tokenTTL = 24 * time.Hour

// deviceAuth mints a device token for user and returns it as a ready
// Authorization header value.
func (s secrets) deviceAuth(user string) ([]string, error) {
	tok, err := auth.Mint(s.secret, user, tokenTTL, time.Now())
	if err != nil {
		return nil, err
	}
	return authorization(tok), nil
}

// device is one simulated device: it PUTs its own key, or cycles over
// keys of its own, one op per sync, each batch numbered after the last and
// based on the version the last answer gave. The sync loads of both
// benches, and the PostgreSQL bench's watch probes, are made of them.
type device struct {
	send   syncFunc
	auth   []string            // the Authorization header value of the device's token
	req    *dalvv1.SyncRequest // reused: the call is done with it on return
	value  []byte              // the PUT's value, rewritten per batch
	number []byte              // the part of value that numbers the batch
	key    string              // the key, or with keys above 1 the keys' prefix
	keys   uint64
	base   uint64
	grown  *atomic.Int64 // with keys above 1, counts the device once it has PUT each key
}

// syncFunc sends a device's sync and returns the answer, which is the
// device's until its next call.
type syncFunc func(ctx context.Context, req *dalvv1.SyncRequest) (*dalvv1.SyncResponse, error)

// newDevice is device id of user, syncing through c with a token of its
// own: a device as newSyncingDevice makes it.
func (s secrets) newDevice(c *clients, user, id string, valueBytes, keys int) (*device, error) {
	a, err := s.deviceAuth(user)
	if err != nil {
		return nil, err
	}
	d := newSyncingDevice(c.syncer(a), id, valueBytes, keys)
	d.auth = a
	return d, nil
}

// newSyncingDevice is device id, syncing through send values of valueBytes
// bytes to the key "bench/" + id, or with keys above 1 to "bench/" + id +
// "/0" … "/<keys-1>" in turn, so that its user's partition holds that many
// entries. A value is a JSON string ("vvv…" and the batch's number) when
// it has room for the quotes, as applications' values are often JSON:
// write rules with a schema can check it.
func newSyncingDevice(send syncFunc, id string, valueBytes, keys int) *device {
	d := &device{send: send, value: make([]byte, valueBytes), key: "bench/" + id, keys: uint64(max(keys, 1))}
	if d.keys > 1 {
		d.key += "/"
	}
	for i := range d.value {
		d.value[i] = 'v'
	}
	d.number = d.value
	if n := len(d.value); n >= 3 {
		d.value[0], d.value[n-1] = '"', '"'
		d.number = d.value[1 : n-1]
	}
	d.req = &dalvv1.SyncRequest{
		DeviceId: id,
		Ops: []*dalvv1.Op{{
			Kind:  dalvv1.OpKind_OP_KIND_PUT,
			Key:   d.key,
			Value: &dalvv1.Value{Kind: &dalvv1.Value_Scalar{Scalar: d.value}},
		}},
	}
	return d
}

// sync uploads the next batch.
func (d *device) sync(ctx context.Context) error {
	d.req.Batch++
	d.req.BaseVersion = d.base
	putNumber(d.number, d.req.Batch)
	if d.keys > 1 {
		d.req.Ops[0].Key = d.key + strconv.FormatUint(d.req.Batch%d.keys, 10)
	}
	m, err := d.send(ctx, d.req)
	if err != nil {
		return fmt.Errorf("device %s, batch %d: %w", d.req.DeviceId, d.req.Batch, err)
	}
	if m.GetStatus() != dalvv1.SyncStatus_SYNC_STATUS_ACCEPTED || m.GetVersion() <= d.base {
		return fmt.Errorf("%w: device %s, batch %d from version %d: status %v, version %d, conflicts %q",
			ErrWrongAnswer, d.req.DeviceId, d.req.Batch, d.base, m.GetStatus(), m.GetVersion(), m.GetConflicts())
	}
	d.base = m.GetVersion()
	if d.grown != nil && d.req.Batch == d.keys {
		d.grown.Add(1)
	}
	return nil
}

// syncer returns a device's Sync call with the Authorization header value
// auth, through the lean client's connections or connect-go's client. The
// answer is the device's until its next call.
func (c *clients) syncer(auth []string) syncFunc {
	if c.lean != nil {
		resp := new(dalvv1.SyncResponse)
		return func(ctx context.Context, req *dalvv1.SyncRequest) (*dalvv1.SyncResponse, error) {
			conn := c.lean.get()
			defer c.lean.put(conn)
			return resp, conn.call(ctx, dalvv1connect.ClientServiceSyncProcedure, auth, req, resp)
		}
	}
	return func(ctx context.Context, req *dalvv1.SyncRequest) (*dalvv1.SyncResponse, error) {
		r := connect.NewRequest(req)
		r.Header()["Authorization"] = auth
		resp, err := c.device.Sync(ctx, r)
		if err != nil {
			return nil, err
		}
		return resp.Msg, nil
	}
}

// putNumber writes n in decimal at the end of b, as far as it fits.
func putNumber(b []byte, n uint64) {
	for i := len(b) - 1; i >= 0; i-- {
		b[i] = byte('0' + n%10)
		if n /= 10; n == 0 {
			return
		}
	}
}
