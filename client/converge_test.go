package client_test

// TestConvergence runs several devices of one user and a backend doing
// random writes while devices lose their network, stop and restart their
// sync loop, sync explicitly, and the server restarts. After everything
// quiesces, every replica must equal the server's partition, and every
// write a device's call acknowledged must either have reached the server
// (it is in the change feed) or have been shown to that device's resolver.
//
// Knobs: DALV_CONVERGE_SEED (the seed of the operations and disruptions;
// logged), DALV_CONVERGE_LONG (set: a long run). The seed fixes what is done
// and when; goroutine scheduling still varies from run to run. Replay with
//
//	DALV_CONVERGE_SEED=42 go test -race -run TestConvergence ./client/

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/dalvdb/dalv/client"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/internal/wait"
	"github.com/dalvdb/dalv/value"
)

// convergeDevice is one device of the run and what it was told.
type convergeDevice struct {
	name    string
	r       *client.Replica
	net     *netSwitch
	running bool
	cancel  context.CancelFunc

	mu     sync.Mutex
	acked  []ackedWrite
	shown  map[string][]shownConflict // key -> what the resolver was shown
	seq    int
	netCut bool
}

// shownConflict is one call of a device's resolver.
type shownConflict struct {
	at    int64
	local *dalvv1.Value
}

// ackedWrite is an op a device's call acknowledged, and when.
type ackedWrite struct {
	op  *dalvv1.Op
	at  int64 // the transaction's acknowledgement
	idx int   // the op's place in its transaction
}

// after reports whether w was made after x.
func (w ackedWrite) after(x ackedWrite) bool {
	return w.at > x.at || (w.at == x.at && w.idx > x.idx)
}

var clock atomic.Int64 // orders acknowledgements and resolver calls

func (d *convergeDevice) resolve(c client.Conflict) client.Resolution {
	d.mu.Lock()
	if d.shown == nil {
		d.shown = make(map[string][]shownConflict)
	}
	d.shown[c.Key] = append(d.shown[c.Key], shownConflict{at: clock.Add(1), local: c.Local})
	d.mu.Unlock()
	// Deterministic in the values: lists take the union, scalars the
	// larger side (so both ClientWins and ServerWins outcomes happen).
	switch {
	case c.Local == nil:
		return client.Use(c.Remote)
	case c.Remote == nil:
		return client.Use(c.Local)
	case value.IsList(c.Local) && value.IsList(c.Remote):
		out := c.Remote
		for _, it := range c.Local.GetList().GetItems() {
			out, _, _ = value.Apply(out, &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_LIST_ADD, Key: c.Key, Value: value.Scalar(it)})
		}
		return client.Use(out)
	case value.IsList(c.Local) != value.IsList(c.Remote):
		return client.Use(c.Remote)
	case string(c.Local.GetScalar()) > string(c.Remote.GetScalar()):
		return client.Use(c.Local)
	}
	return client.Use(c.Remote)
}

func (d *convergeDevice) start(t *testing.T) {
	if d.running {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := d.r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	d.running, d.cancel = true, cancel
}

func (d *convergeDevice) stop() {
	if d.running {
		d.r.Stop()
		d.cancel()
		d.running = false
	}
}

func TestConvergence(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("DALV_CONVERGE_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("DALV_CONVERGE_SEED=%q", s)
		}
		seed = n
	}
	rounds, steps, ndev := 4, 40, 3
	if os.Getenv("DALV_CONVERGE_LONG") != "" {
		rounds, steps, ndev = 150, 80, 4
	}
	t.Logf("seed %d (DALV_CONVERGE_SEED=%d to replay), %d rounds of %d steps, %d devices", seed, seed, rounds, steps, ndev)
	rng := rand.New(rand.NewPCG(seed, seed^0x5851f42d4c957f2d))
	srv := startServer(t, "--rate-limit", "-1")
	const user = "conv"
	var devs []*convergeDevice
	for i := range ndev {
		d := &convergeDevice{name: fmt.Sprintf("d%d", i)}
		d.r, d.net = device(t, srv, d.name+".db", user, client.Options{Resolver: d.resolve, RetryMin: 5 * time.Millisecond, RetryMax: 100 * time.Millisecond})
		d.start(t)
		devs = append(devs, d)
	}
	defer func() {
		for _, d := range devs {
			d.stop()
		}
	}()
	scalars := []string{"s/a", "s/b", "s/c", "s/d"}
	lists := []string{"l/x", "l/y"}
	beSeq := 0
	randomOp := func(tag string, n int) *dalvv1.Op {
		v := fmt.Sprintf("%s:%d", tag, n)
		switch x := rng.IntN(10); {
		case x < 4:
			return put(scalars[rng.IntN(len(scalars))], v)
		case x < 5:
			return del(scalars[rng.IntN(len(scalars))])
		case x < 8:
			return listAdd(lists[rng.IntN(len(lists))], v)
		default:
			// Remove an element some device added: the latest of a
			// random tag, which may or may not still be there.
			return &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_LIST_REMOVE, Key: lists[rng.IntN(len(lists))], Value: value.Scalar(fmt.Appendf(nil, "%s:%d", tag, rng.IntN(n+1)))}
		}
	}
	write := func(d *convergeDevice) {
		nops := 1 + rng.IntN(3)
		var ops []*dalvv1.Op
		for range nops {
			d.seq++
			ops = append(ops, randomOp(d.name, d.seq))
		}
		err := d.r.Update(func(tx *client.Tx) error {
			for _, op := range ops {
				var err error
				switch op.GetKind() {
				case dalvv1.OpKind_OP_KIND_PUT:
					err = tx.Put(op.GetKey(), op.GetValue().GetScalar())
				case dalvv1.OpKind_OP_KIND_DELETE:
					err = tx.Delete(op.GetKey())
				case dalvv1.OpKind_OP_KIND_LIST_ADD:
					err = tx.ListAdd(op.GetKey(), op.GetValue().GetScalar())
				case dalvv1.OpKind_OP_KIND_LIST_REMOVE:
					err = tx.ListRemove(op.GetKey(), op.GetValue().GetScalar())
				}
				if err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: write %v: %v", d.name, ops, err)
		}
		at := clock.Add(1)
		d.mu.Lock()
		for i, op := range ops {
			d.acked = append(d.acked, ackedWrite{op: op, at: at, idx: i})
		}
		d.mu.Unlock()
	}
	for round := range rounds {
		for range steps {
			d := devs[rng.IntN(len(devs))]
			switch x := rng.IntN(100); {
			case x < 60:
				write(d)
			case x < 72:
				if srv.addr() == "" {
					continue
				}
				beSeq++
				ops := []*dalvv1.Op{randomOp("be", beSeq)}
				if _, err := srv.backend().Commit(context.Background(), connect.NewRequest(&dalvv1.CommitRequest{User: user, Ops: ops})); err != nil {
					t.Fatalf("backend commit: %v", err)
				}
			case x < 82:
				d.netCut = !d.netCut
				d.net.set(d.netCut)
			case x < 90:
				if d.running {
					d.stop()
				} else {
					d.start(t)
				}
			default:
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_ = d.r.Sync(ctx) // may fail: offline, or the server restarting
				cancel()
			}
		}
		if round%2 == 1 {
			if round%4 == 1 {
				srv.kill()
			} else {
				for _, d := range devs {
					d.net.CloseIdleConnections()
				}
				srv.stop()
			}
			for range 5 {
				write(devs[rng.IntN(len(devs))])
			}
			srv.start()
		}
	}
	// Quiesce: everyone online and syncing, until all agree.
	for _, d := range devs {
		d.netCut = false
		d.net.set(false)
		d.start(t)
	}
	var want map[string]*dalvv1.Value
	var version uint64
	wait.For(t, 60*time.Second, func() error {
		want, version = srv.state(t, user)
		for _, d := range devs {
			st := d.r.Status()
			if st.Pending != 0 || st.Version != version {
				return fmt.Errorf("%s: status %+v, server at %d", d.name, st, version)
			}
		}
		for _, d := range devs {
			if diff := diffStates(localState(t, d.r), want); diff != "" {
				return fmt.Errorf("%s differs from the server: %s", d.name, diff)
			}
		}
		return nil
	})
	for _, d := range devs {
		st := d.r.Status()
		if st.Refused != 0 || st.Conflicts != 0 {
			t.Errorf("%s: %d refused batches, %d deferred conflicts; want none", d.name, st.Refused, st.Conflicts)
		}
	}
	// Every acknowledged write reached the server or was shown to the
	// device's resolver after it was made.
	applied := feedOps(t, srv, user, version)
	var lost []string
	total, viaResolver := 0, 0
	for _, d := range devs {
		for _, w := range d.acked {
			total++
			if applied[opID(w.op)] {
				continue
			}
			if d.shownTo(w) {
				viaResolver++
				continue
			}
			detail := fmt.Sprintf("%s: %s (at %d; shown:", d.name, opID(w.op), w.at)
			for _, sc := range d.shown[w.op.GetKey()] {
				detail += fmt.Sprintf(" %d=%s", sc.at, show(sc.local))
			}
			detail += "; device writes on the key:"
			for _, x := range d.acked {
				if x.op.GetKey() == w.op.GetKey() {
					detail += fmt.Sprintf(" %d=%s", x.at, opID(x.op))
				}
			}
			lost = append(lost, detail+")")
		}
	}
	if len(lost) > 0 {
		t.Fatalf("seed %d: %d acknowledged writes neither reached the server nor were shown to the resolver: %s", seed, len(lost), strings.Join(lost, "; "))
	}
	t.Logf("%d acknowledged writes: %d reached the server, %d went to the resolver instead; server at version %d", total, total-viaResolver, viaResolver, version)
}

// shownTo reports whether the resolver was shown w after it was made: the
// Local it was shown has w's effect, or a later write of the device to the
// same key, made before that call, superseded it.
func (d *convergeDevice) shownTo(w ackedWrite) bool {
	for _, sc := range d.shown[w.op.GetKey()] {
		if sc.at < w.at {
			continue
		}
		for _, later := range d.acked {
			if later.after(w) && later.at < sc.at && later.op.GetKey() == w.op.GetKey() {
				return true // superseded before the call; that write is checked itself
			}
		}
		elem := w.op.GetValue().GetScalar()
		has := slices.ContainsFunc(sc.local.GetList().GetItems(), func(it []byte) bool { return string(it) == string(elem) })
		switch w.op.GetKind() {
		case dalvv1.OpKind_OP_KIND_PUT:
			if equalOpt(sc.local, w.op.GetValue()) {
				return true
			}
		case dalvv1.OpKind_OP_KIND_DELETE:
			if sc.local == nil {
				return true
			}
		case dalvv1.OpKind_OP_KIND_LIST_ADD:
			if has {
				return true
			}
		case dalvv1.OpKind_OP_KIND_LIST_REMOVE:
			if !has {
				return true
			}
		}
	}
	return false
}

func opID(op *dalvv1.Op) string {
	return fmt.Sprintf("%s %s %s", strings.TrimPrefix(op.GetKind().String(), "OP_KIND_"), op.GetKey(), op.GetValue().GetScalar())
}

// feedOps reads the backend change feed from the start up to version of
// user's partition and returns every op applied.
func feedOps(t *testing.T, srv *server, user string, version uint64) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := connect.NewRequest(&dalvv1.BackendServiceWatchRequest{Cursor: "start"})
	req.Header().Set("Authorization", "Bearer "+testBackendKey)
	stream, err := srv.backend().Watch(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	out := make(map[string]bool)
	for stream.Receive() {
		ev := stream.Msg()
		if ev.GetUser() != user {
			continue
		}
		for _, op := range ev.GetOps() {
			out[opID(op)] = true
		}
		if ev.GetVersion() >= version {
			return out
		}
	}
	if err := stream.Err(); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("feed: %v", err)
	}
	t.Fatalf("feed ended before version %d", version)
	return nil
}
