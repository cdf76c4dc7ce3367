package e2e

// TestCrashDurability SIGKILLs `dalv serve` while devices sync and checks,
// after each restart on the same data directory, that no acknowledged batch
// was lost, none is half-applied, versions are dense and never go back, and
// a batch whose answer was lost is applied at most once when retried.
//
// Environment knobs (defaults in brackets):
//
//	DALV_CRASH_KILLS    SIGKILLs in one run [20; `make soak` runs 200]
//	DALV_CRASH_SEED     seed of the kill moments and the values [from the clock; logged]
//	DALV_CRASH_USERS    users [3]
//	DALV_CRASH_DEVICES  devices per user [3]
//	DALV_CRASH_MAX_ACKS most batches acknowledged in one round before the kill [200]
//
// Replay a failure with the seed it logged, e.g.
//
//	DALV_CRASH_SEED=12345 go test -race -count=1 -run TestCrashDurability ./e2e/
//
// The seed fixes the values and the kill points (the number of
// acknowledgements after which each kill comes); goroutine scheduling still
// varies from run to run.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	gosync "sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/value"
)

// crashEnvInt reads a positive integer knob from the environment.
func crashEnvInt(t *testing.T, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return n
}

// crashSeed is DALV_CRASH_SEED, or one from the clock.
func crashSeed(t *testing.T, name string) uint64 {
	t.Helper()
	if s := os.Getenv(name); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: want an unsigned integer", name, s)
		}
		return n
	}
	return uint64(time.Now().UnixNano())
}

// crashBatch is one batch a device sent: a PUT of a fresh value to the
// device's own key and a LIST_ADD of the element "DEVICE:N" to its user's
// list of the round. Both carry the batch number, so a half-applied batch
// shows as a PUT without its element or an element without its PUT.
type crashBatch struct {
	n     uint64
	round int
	base  uint64
	put   string // the PUT value: "DEVICE:N:RANDOM"
	elem  string // the list element: "DEVICE:N"
	ops   []*dalvv1.Op
	acked uint64 // version of the first-success answer; 0 if never seen
}

// crashDevice is one device. Its batches go out one at a time: batch N+1
// only after N was acknowledged, so at most its last batch is in doubt.
type crashDevice struct {
	user, id, key string
	rng           *rand.Rand
	sent          []*crashBatch // batch N at index N-1
	acked         uint64        // highest acknowledged batch
	base          uint64        // version of the last answer
}

// pending is the batch sent whose answer was lost, or nil.
func (d *crashDevice) pending() *crashBatch {
	if uint64(len(d.sent)) > d.acked {
		return d.sent[len(d.sent)-1]
	}
	return nil
}

func crashListKey(round int) string { return fmt.Sprintf("log/r%03d", round) }

func (d *crashDevice) next(round int) *crashBatch {
	n := uint64(len(d.sent)) + 1
	b := &crashBatch{
		n:     n,
		round: round,
		base:  d.base,
		put:   fmt.Sprintf("%s:%d:%016x", d.id, n, d.rng.Uint64()),
		elem:  fmt.Sprintf("%s:%d", d.id, n),
	}
	b.ops = []*dalvv1.Op{
		{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: d.key, Value: value.Scalar([]byte(b.put))},
		{Kind: dalvv1.OpKind_OP_KIND_LIST_ADD, Key: crashListKey(round), Value: value.Scalar([]byte(b.elem))},
	}
	d.sent = append(d.sent, b)
	return b
}

func (d *crashDevice) request(b *crashBatch) *connect.Request[dalvv1.SyncRequest] {
	return connect.NewRequest(&dalvv1.SyncRequest{DeviceId: d.id, BaseVersion: b.base, Batch: b.n, Ops: b.ops})
}

// crashCheckAnswer checks the first-success answer to b: accepted, whole,
// and carrying b's own changes at the answer's version.
func crashCheckAnswer(d *crashDevice, b *crashBatch, resp *dalvv1.SyncResponse) error {
	if got, want := resp.GetStatus(), dalvv1.SyncStatus_SYNC_STATUS_ACCEPTED; got != want {
		return fmt.Errorf("%s batch %d: status %v (conflicts %q), want %v", d.id, b.n, got, resp.GetConflicts(), want)
	}
	if resp.GetMore() || resp.GetReset_() {
		return fmt.Errorf("%s batch %d: more=%v reset=%v on a small partition", d.id, b.n, resp.GetMore(), resp.GetReset_())
	}
	if resp.GetVersion() <= b.base {
		return fmt.Errorf("%s batch %d: answer version %d is not after base %d", d.id, b.n, resp.GetVersion(), b.base)
	}
	var sawPut, sawElem bool
	for _, c := range resp.GetChanges() {
		switch c.GetKey() {
		case d.key:
			sawPut = string(c.GetValue().GetScalar()) == b.put && c.GetVersion() == resp.GetVersion()
		case crashListKey(b.round):
			sawElem = slices.ContainsFunc(c.GetValue().GetList().GetItems(), func(it []byte) bool { return string(it) == b.elem })
		}
	}
	if !sawPut || !sawElem {
		return fmt.Errorf("%s batch %d: answer at version %d lacks its own ops (put seen: %v, element seen: %v)", d.id, b.n, resp.GetVersion(), sawPut, sawElem)
	}
	return nil
}

// crashIsTransport reports whether err is the connection failing rather
// than an answer from the server: unavailable, or a reset connection, which
// connect-go's client reports as canceled.
func crashIsTransport(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable:
		return true
	case connect.CodeCanceled:
		return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
	}
	return false
}

// crashHTTP is a client with room for one idle connection per device.
func crashHTTP(conns int) *http.Client {
	return &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conns}}
}

func crashClient(hc *http.Client, srv *proc.Server, tok string) dalvv1connect.ClientServiceClient {
	return dalvv1connect.NewClientServiceClient(hc, srv.URL(), bearer(tok))
}

func TestCrashDurability(t *testing.T) {
	kills := crashEnvInt(t, "DALV_CRASH_KILLS", 20)
	nUsers := crashEnvInt(t, "DALV_CRASH_USERS", 3)
	nDevices := crashEnvInt(t, "DALV_CRASH_DEVICES", 3)
	maxAcks := crashEnvInt(t, "DALV_CRASH_MAX_ACKS", 200)
	seed := crashSeed(t, "DALV_CRASH_SEED")
	t.Logf("seed %d (replay with DALV_CRASH_SEED=%d); %d kills, %d users x %d devices", seed, seed, kills, nUsers, nDevices)
	rng := rand.New(rand.NewPCG(seed, 0))

	var (
		users   []string
		tokens  = map[string]string{}
		devices []*crashDevice
	)
	for u := range nUsers {
		user := fmt.Sprintf("crash-u%d", u)
		users = append(users, user)
		tokens[user] = token(t, user)
		for i := range nDevices {
			id := fmt.Sprintf("u%d-d%d", u, i)
			devices = append(devices, &crashDevice{user: user, id: id, key: "dev/" + id, rng: rand.New(rand.NewPCG(seed, uint64(1+len(devices))))})
		}
	}

	data := filepath.Join(t.TempDir(), "data")
	start := time.Now()
	var inDoubt, appliedInDoubt, totalAcked int
	for round := 0; ; round++ {
		srv := startServerOn(t, data)
		if round > 0 {
			a, applied := crashVerifyAndRetry(t, srv, users, tokens, devices, round)
			inDoubt += a
			appliedInDoubt += applied
		}
		if round == kills {
			break
		}
		target := 1 + rng.IntN(maxAcks)
		totalAcked += crashLoad(t, srv, tokens, devices, round, target)
		if t.Failed() {
			t.FailNow()
		}
	}
	var batches uint64
	for _, d := range devices {
		batches += d.acked
	}
	t.Logf("%d kills in %v: %d batches acknowledged during load, %d in doubt at a kill (%d of them applied before it), %d applied in all",
		kills, time.Since(start).Round(time.Millisecond), totalAcked, inDoubt, appliedInDoubt, batches)
}

// crashLoad runs every device until target batches were acknowledged in
// this round, then SIGKILLs the server and waits for the devices to stop.
// It returns the number of batches acknowledged.
func crashLoad(t *testing.T, srv *proc.Server, tokens map[string]string, devices []*crashDevice, round, target int) int {
	t.Helper()
	hc := crashHTTP(len(devices))
	defer hc.CloseIdleConnections()
	var (
		killed  atomic.Bool
		acked   atomic.Int64
		reached = make(chan struct{})
		wg      gosync.WaitGroup
	)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, d := range devices {
		c := crashClient(hc, srv, tokens[d.user])
		wg.Go(func() {
			for {
				b := d.next(round)
				resp, err := c.Sync(ctx, d.request(b))
				if err != nil {
					switch {
					case !killed.Load():
						t.Errorf("round %d: %s batch %d before the kill: %v", round, d.id, b.n, err)
					case !crashIsTransport(err):
						t.Errorf("round %d: %s batch %d: after the kill, want a transport error, got %v", round, d.id, b.n, err)
					}
					return // b stays in doubt
				}
				if err := crashCheckAnswer(d, b, resp.Msg); err != nil {
					t.Errorf("round %d: %v", round, err)
					return
				}
				d.acked, d.base, b.acked = b.n, resp.Msg.GetVersion(), resp.Msg.GetVersion()
				if acked.Add(1) == int64(target) {
					close(reached)
				}
			}
		})
	}
	stopped := make(chan struct{})
	go func() { wg.Wait(); close(stopped) }()
	select {
	case <-reached:
	case <-stopped:
		t.Fatalf("round %d: every device stopped before %d batches were acknowledged\n%s", round, target, srv.Stderr())
	case <-time.After(30 * time.Second):
		_ = srv.Kill()
		<-stopped
		t.Fatalf("round %d: %d of %d batches acknowledged after 30s", round, acked.Load(), target)
	}
	killed.Store(true)
	if err := srv.Kill(); err != nil {
		t.Fatalf("round %d: kill: %v", round, err)
	}
	<-stopped
	return int(acked.Load())
}

// crashState is one user's partition as a backend reads it.
type crashState struct {
	version uint64
	items   map[string]*dalvv1.Change
}

func crashRead(ctx context.Context, t *testing.T, bc dalvv1connect.BackendServiceClient, user string, keys []string) crashState {
	t.Helper()
	resp, err := bc.Get(ctx, connect.NewRequest(&dalvv1.GetRequest{User: user, Keys: keys}))
	if err != nil {
		t.Fatalf("Get %s after restart: %v", user, err)
	}
	st := crashState{version: resp.Msg.GetVersion(), items: map[string]*dalvv1.Change{}}
	for _, c := range resp.Msg.GetItems() {
		st.items[c.GetKey()] = c
	}
	return st
}

// crashPullAll pulls user's whole partition as a new device would, page by
// page, and returns its final version and keys.
func crashPullAll(ctx context.Context, c dalvv1connect.ClientServiceClient, device string) (crashState, error) {
	st := crashState{items: map[string]*dalvv1.Change{}}
	var base, horizon uint64
	for range 1000 {
		resp, err := c.Sync(ctx, connect.NewRequest(&dalvv1.SyncRequest{DeviceId: device, BaseVersion: base, ResetHorizon: horizon}))
		if err != nil {
			return st, fmt.Errorf("pull from %d: %w", base, err)
		}
		m := resp.Msg
		if m.GetReset_() {
			horizon = m.GetHorizon()
		}
		for _, ch := range m.GetChanges() {
			st.items[ch.GetKey()] = ch
		}
		base = m.GetVersion()
		if !m.GetMore() {
			st.version = base
			return st, nil
		}
	}
	return st, fmt.Errorf("pull did not finish in 1000 pages")
}

func crashHasElem(c *dalvv1.Change, elem string) int {
	n := 0
	for _, it := range c.GetValue().GetList().GetItems() {
		if string(it) == elem {
			n++
		}
	}
	return n
}

// crashVerifyAndRetry checks every user's partition after a restart, then
// retries the batches in doubt (twice: the second retry stands for a retry
// whose answer was lost too) and checks each applied exactly once. It
// returns the number of batches in doubt and how many of them the server
// had applied before the kill.
func crashVerifyAndRetry(t *testing.T, srv *proc.Server, users []string, tokens map[string]string, devices []*crashDevice, round int) (inDoubt, applied int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	hc := crashHTTP(4)
	defer hc.CloseIdleConnections()
	bc := dalvv1connect.NewBackendServiceClient(hc, srv.URL(), bearer(testBackendKey))

	byUser := map[string][]*crashDevice{}
	for _, d := range devices {
		byUser[d.user] = append(byUser[d.user], d)
	}
	keysOf := func(user string) []string {
		var keys []string
		for _, d := range byUser[user] {
			keys = append(keys, d.key)
		}
		for r := range round {
			keys = append(keys, crashListKey(r))
		}
		return keys
	}

	// 1. What survived the kill.
	for _, user := range users {
		st := crashRead(ctx, t, bc, user, keysOf(user))
		var sum, maxAcked uint64
		ackedAt := map[uint64]string{}
		for _, d := range byUser[user] {
			m := uint64(0) // the device's last applied batch
			if c := st.items[d.key]; c != nil {
				id, rest, _ := strings.Cut(string(c.GetValue().GetScalar()), ":")
				nStr, _, _ := strings.Cut(rest, ":")
				n, err := strconv.ParseUint(nStr, 10, 64)
				if id != d.id || err != nil || n == 0 || n > uint64(len(d.sent)) {
					t.Fatalf("round %d: %s holds %q, which %s never sent", round, d.key, c.GetValue().GetScalar(), d.id)
				}
				if got, want := string(c.GetValue().GetScalar()), d.sent[n-1].put; got != want {
					t.Fatalf("round %d: %s = %q, want batch %d's value %q", round, d.key, got, n, want)
				}
				if b := d.sent[n-1]; b.acked != 0 && c.GetVersion() != b.acked {
					t.Fatalf("round %d: %s last changed at version %d, but batch %d was acknowledged at version %d", round, d.key, c.GetVersion(), n, b.acked)
				}
				m = n
			}
			p := d.pending()
			switch {
			case m < d.acked:
				t.Fatalf("round %d: acknowledged batch %d of %s lost: %s holds batch %d's value", round, d.acked, d.id, d.key, m)
			case m > d.acked && (p == nil || m != p.n):
				t.Fatalf("round %d: %s holds batch %d of %s, past the acknowledged %d and the one in doubt", round, d.key, m, d.id, d.acked)
			}
			if p != nil {
				inDoubt++
				if m == p.n {
					applied++
				}
			}
			// Every applied batch has its element; the one in doubt, if not
			// applied, has neither its PUT (checked above) nor its element.
			for _, b := range d.sent {
				want := 0
				if b.n <= m {
					want = 1
				}
				if got := crashHasElem(st.items[crashListKey(b.round)], b.elem); got != want {
					t.Fatalf("round %d: %s holds batch %d of %s (acknowledged %d), but %s holds element %q %d times, want %d: half-applied batch",
						round, d.key, m, d.id, d.acked, crashListKey(b.round), b.elem, got, want)
				}
				if b.acked != 0 {
					if other, dup := ackedAt[b.acked]; dup {
						t.Fatalf("round %d: version %d acknowledged for two commits: %s and %s batch %d", round, b.acked, other, d.id, b.n)
					}
					ackedAt[b.acked] = fmt.Sprintf("%s batch %d", d.id, b.n)
					maxAcked = max(maxAcked, b.acked)
				}
			}
			sum += m
		}
		// Nothing but these batches wrote the partition, one commit each, so
		// its version counts them: dense versions, nothing applied twice.
		if st.version != sum {
			t.Fatalf("round %d: %s is at version %d after restart, but its devices' applied batches number %d", round, user, st.version, sum)
		}
		if st.version < maxAcked {
			t.Fatalf("round %d: %s went back to version %d after restart; version %d was acknowledged before the kill", round, user, st.version, maxAcked)
		}
		for _, k := range keysOf(user) {
			if c := st.items[k]; c != nil && (c.GetVersion() == 0 || c.GetVersion() > st.version) {
				t.Fatalf("round %d: %s key %s changed at version %d, outside 1..%d", round, user, k, c.GetVersion(), st.version)
			}
		}
		// A new device pulling the partition sees the same state.
		pulled, err := crashPullAll(ctx, crashClient(hc, srv, tokens[user]), fmt.Sprintf("checker-%d", round))
		if err != nil {
			t.Fatalf("round %d: %s: %v", round, user, err)
		}
		if pulled.version != st.version || len(pulled.items) != len(st.items) {
			t.Fatalf("round %d: %s pulled at version %d with %d keys; the backend reads version %d with %d keys", round, user, pulled.version, len(pulled.items), st.version, len(st.items))
		}
		for k, c := range st.items {
			if p := pulled.items[k]; p.GetVersion() != c.GetVersion() || !proto.Equal(p.GetValue(), c.GetValue()) {
				t.Fatalf("round %d: %s key %s pulled as %v, read by the backend as %v", round, user, k, p, c)
			}
		}
	}

	// 2. Retry every batch in doubt with its number and ops, twice.
	for try := 1; try <= 2; try++ {
		for _, d := range devices {
			p := d.pending()
			if p == nil {
				continue
			}
			resp, err := crashClient(hc, srv, tokens[d.user]).Sync(ctx, d.request(p))
			if err != nil {
				t.Fatalf("round %d: retry %d of %s batch %d: %v", round, try, d.id, p.n, err)
			}
			if got, want := resp.Msg.GetStatus(), dalvv1.SyncStatus_SYNC_STATUS_ACCEPTED; got != want {
				t.Fatalf("round %d: retry %d of %s batch %d: status %v, want %v", round, try, d.id, p.n, got, want)
			}
			if try == 2 {
				d.acked, d.base = p.n, resp.Msg.GetVersion()
			}
		}
	}
	for _, user := range users {
		st := crashRead(ctx, t, bc, user, keysOf(user))
		var sum uint64
		for _, d := range byUser[user] {
			sum += uint64(len(d.sent))
			if n := len(d.sent); n > 0 {
				b := d.sent[n-1]
				if got := string(st.items[d.key].GetValue().GetScalar()); got != b.put {
					t.Fatalf("round %d: after retries %s = %q, want %q", round, d.key, got, b.put)
				}
				if got := crashHasElem(st.items[crashListKey(b.round)], b.elem); got != 1 {
					t.Fatalf("round %d: after retries %s holds %q %d times, want once", round, crashListKey(b.round), b.elem, got)
				}
			}
		}
		if st.version != sum {
			t.Fatalf("round %d: after retrying the batches in doubt twice, %s is at version %d; its devices sent %d batches: a retry applied twice or not at all", round, user, st.version, sum)
		}
	}
	return inDoubt, applied
}
