package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/proc"
)

// The device-watch scenarios: delivery times commits to the watchers of
// their partition under a steady commit rate; idle-watchers weighs what an
// open, idle watch costs the server in resident memory.
//
// Watch streams go over HTTP/2 without TLS (h2c), up to streamsPerConn on a
// connection, so that 10,000 streams need 50 sockets, not 10,000. That is a
// load generator's shape, not a fleet's: a device has a connection of its
// own, so the per-watcher memory measured here leaves out most of a
// connection's cost, which 200 streams share.

// Targets of the watch scenarios. The delivery p99 is bounded by
// TargetWatchP99, the PostgreSQL bench's commit-to-watcher target.
const (
	// TargetIdleWatcherBytes is the most resident memory an open, idle
	// device watch may add to the server.
	TargetIdleWatcherBytes = 32 << 10
)

// Defaults of the watch scenarios' [Config] fields.
const (
	DefaultWatchers     = 1_000
	DefaultWatchUsers   = 100
	DefaultDeliveryRate = 1_000
	DefaultIdleWatchers = 10_000
	DefaultIdleUsers    = 1_000
)

// streamsPerConn is how many watch streams share one h2c connection: fewer
// than the 250 concurrent streams Go's HTTP/2 server allows a connection by
// default (http.Server.HTTP2.MaxConcurrentStreams). dalv serve keeps that
// default: a real device opens a stream or two on its own connection, so the
// limit only bounds a load generator playing many devices over few sockets,
// and raising it would only let one client hold more of the server.
const streamsPerConn = 200

// Bounds of the waits around the measurements.
const (
	openTimeout  = 2 * time.Minute  // for every watch to get its catch-up heartbeat
	drainTimeout = 10 * time.Second // for the last commits to reach every watcher
	closeTimeout = 30 * time.Second // for the server to let go of closed watches
	settleMax    = 5 * time.Second  // for the server's RSS to stop moving
	settleWindow = 10               // samples, sampleEvery apart, within settleBytes
	settleBytes  = 256 << 10
	maxOpening   = 500 // watches opened but not yet at their heartbeat
)

var watchMetrics = []metric{
	{Delivery, "p50", "commit to delivery p50 (from sending it)", "ms", fixed(2), "", nil},
	{Delivery, "p99", "commit to delivery p99 (from sending it)", "ms", fixed(2), fmt.Sprintf("< %v ms", ms(TargetWatchP99)),
		func(v float64) bool { return v < ms(TargetWatchP99) }},
	{Delivery, "max", "commit to delivery max", "ms", fixed(2), "", nil},
	{Delivery, "fanout_p99", "fan-out p99 (from a commit's first delivery)", "ms", fixed(2), "", nil},
	{Delivery, "deliveries", "deliveries measured", "", group, "", nil},
	{Delivery, "missed", "deliveries missed or out of order", "", fixed(0), "0", func(v float64) bool { return v == 0 }},
	{Delivery, "commit_rate", "backend commits/s done", "commits/s", group, "", nil},
	{Delivery, "commit_p99", "commit latency p99 (from its schedule)", "ms", fixed(2), "", nil},
	{Delivery, "server_cores", "server CPU use", "cores", fixed(2), "", nil},
	{Delivery, "bench_cores", "bench CPU use", "cores", fixed(2), "", nil},
	{Delivery, "other_cores", "other processes' CPU use", "cores", fixed(2), "", nil},
	// The server's 100 MB target is for the request scenarios; this one
	// holds a thousand watches by design.
	{Delivery, "rss", "server peak RSS", "MB", megabytes, "", nil},
	{IdleWatchers, "per_watcher", "server RSS growth per idle watcher", "KiB", fixed(1),
		fmt.Sprintf("<= %d KiB", TargetIdleWatcherBytes>>10), func(v float64) bool { return v <= TargetIdleWatcherBytes>>10 }},
	{IdleWatchers, "rss_before", "server RSS before opening", "MB", megabytes, "", nil},
	{IdleWatchers, "rss_after", "server RSS with all open, settled", "MB", megabytes, "", nil},
	{IdleWatchers, "heap_per_watcher", "Go heap allocated per watcher", "KiB", fixed(1), "", nil},
	{IdleWatchers, "stack_per_watcher", "goroutine stacks per watcher", "KiB", fixed(1), "", nil},
	{IdleWatchers, "goroutines_per_watcher", "server goroutines per watcher", "", fixed(2), "", nil},
	{IdleWatchers, "open_time", "time to open all (to the last heartbeat)", "s", fixed(2), "", nil},
	{IdleWatchers, "other_cores", "other processes' CPU use", "cores", fixed(2), "", nil},
}

// watchUser is a user whose partition the bench's watchers follow.
type watchUser struct {
	name string
	auth []string // a device token of the user
	// mu guards sent and arrivals: sent[i] is when the commit that makes
	// version i+1 was sent, and whether it was in the measurement;
	// arrivals are when the measured ones reached the user's watchers.
	mu       sync.Mutex
	sent     []sentCommit
	arrivals []arrival
	head     atomic.Uint64
}

type arrival struct {
	version uint64
	at      time.Duration
}

type sentCommit struct {
	at       time.Duration // since the scenario's clock started
	measured bool
}

// watcher is one device watch and what it received.
type watcher struct {
	user   *watchUser
	conn   int
	device string
	ready  chan struct{} // closed at the catch-up's heartbeat, or when the stream ends
	done   chan struct{} // closed when the stream has ended
	// start is the heartbeat's version, from which live events count;
	// last is the highest version received; inOrder counts the live events
	// that came one version after the one before, repeats those that came
	// with a version already received.
	start, last, inOrder, repeats atomic.Uint64
	err                           error // why the stream ended before the bench closed it; read after done
}

// watchSet is a set of open device watches over h2c connections.
type watchSet struct {
	ws      []*watcher
	conns   []*http.ClientConn
	cancel  context.CancelFunc
	closing atomic.Bool
	wg      sync.WaitGroup
	// received counts live events, for progress lines.
	received atomic.Uint64
}

// watchTarget is the server the watches go to: the bench's, or, for
// idle-watchers, one of its own.
type watchTarget struct {
	url       string
	srv       *proc.Server // nil for a server the bench did not start
	pprofAddr string       // empty without a pprof listener
}

func (b *bencher) mainTarget() *watchTarget {
	return &watchTarget{url: b.url, srv: b.srv, pprofAddr: b.pprofAddr}
}

// done is closed when a server the bench started exits.
func (t *watchTarget) done() <-chan struct{} {
	if t.srv == nil {
		return nil
	}
	return t.srv.Done()
}

// openWatches opens n watches spread round robin over users, each with a
// device of its own, streamsPerConn to a connection, and returns at once;
// wait on each watcher's ready channel. deliver, when set, is called with
// every live event received in order, with the time it was received.
func (b *bencher) openWatches(ctx context.Context, t *watchTarget, tag string, n int, users []*watchUser, deliver func(*watchUser, uint64, time.Duration), clock func() time.Duration) (*watchSet, error) {
	u, err := url.Parse(t.url)
	if err != nil {
		return nil, fmt.Errorf("%w: server URL %q: %w", ErrConfig, t.url, err)
	}
	addr := u.Host
	if _, _, err := net.SplitHostPort(addr); err != nil {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		addr = net.JoinHostPort(u.Hostname(), port)
	}
	tr := &http.Transport{
		Proxy:              nil,
		DialContext:        (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		DisableCompression: true,
		Protocols:          new(http.Protocols),
		TLSClientConfig:    b.cfg.TLS,
	}
	tr.Protocols.SetUnencryptedHTTP2(true)
	tr.Protocols.SetHTTP2(true)
	var opts []connect.ClientOption
	if !b.cfg.Gzip {
		opts = append(opts, connect.WithAcceptCompression("gzip", nil, nil))
	}
	sctx, cancel := context.WithCancel(ctx)
	set := &watchSet{cancel: cancel}
	var clients []dalvv1connect.ClientServiceClient
	for range (n + streamsPerConn - 1) / streamsPerConn {
		cc, err := tr.NewClientConn(ctx, u.Scheme, addr)
		if err != nil {
			set.close()
			return nil, fmt.Errorf("%w: HTTP/2 connection for watches: %w", ErrCallFailed, err)
		}
		set.conns = append(set.conns, cc)
		clients = append(clients, dalvv1connect.NewClientServiceClient(&http.Client{Transport: oneWrite{cc}}, t.url, opts...))
	}
	opening := make(chan struct{}, maxOpening)
	set.ws = make([]*watcher, n)
	for i := range set.ws {
		w := &watcher{user: users[i%len(users)], conn: i / streamsPerConn, device: fmt.Sprintf("b%s-r%d%s-w%d", b.id, b.run, tag, i),
			ready: make(chan struct{}), done: make(chan struct{})}
		set.ws[i] = w
		set.wg.Go(func() {
			select {
			case opening <- struct{}{}:
			case <-sctx.Done():
				close(w.ready)
				close(w.done)
				return
			}
			set.follow(sctx, clients[w.conn], w, func() { <-opening }, deliver, clock)
		})
	}
	return set, nil
}

// follow runs one watch until the set closes, checking that live events
// come one version after another.
func (set *watchSet) follow(ctx context.Context, c dalvv1connect.ClientServiceClient, w *watcher, opened func(), deliver func(*watchUser, uint64, time.Duration), clock func() time.Duration) {
	defer close(w.done)
	live := false
	defer func() {
		if !live {
			close(w.ready)
			opened()
		}
	}()
	req := connect.NewRequest(&dalvv1.WatchRequest{DeviceId: w.device})
	req.Header()["Authorization"] = w.user.auth
	stream, err := c.Watch(ctx, req)
	if err != nil {
		if !set.closing.Load() {
			w.err = err
		}
		return
	}
	defer stream.Close()
	for stream.Receive() {
		var at time.Duration
		if clock != nil {
			at = clock()
		}
		m := stream.Msg()
		if !live {
			// Catch-up events, then the heartbeat that ends the catch-up.
			if m.GetHeartbeat() {
				w.start.Store(m.GetVersion())
				w.last.Store(m.GetVersion())
				live = true
				close(w.ready)
				opened()
			}
			continue
		}
		if m.GetHeartbeat() {
			continue
		}
		set.received.Add(1)
		v, last := m.GetVersion(), w.last.Load()
		if v <= last {
			w.repeats.Add(1)
			continue
		}
		if w.last.Store(v); v != last+1 || m.GetReset_() || m.GetMore() {
			continue // a gap, or a catch-up in place of the commit
		}
		w.inOrder.Add(1)
		if deliver != nil {
			deliver(w.user, v, at)
		}
	}
	if set.closing.Load() {
		return
	}
	if w.err = stream.Err(); w.err == nil {
		w.err = errors.New("the server ended the stream")
	}
}

// failed is the first watch that ended before the bench closed it.
func (set *watchSet) failed() error {
	for _, w := range set.ws {
		select {
		case <-w.done:
			if w.err != nil {
				return fmt.Errorf("%w: watch of %s by device %s (connection %d): %w", ErrCallFailed, w.user.name, w.device, w.conn, w.err)
			}
		default:
		}
	}
	return nil
}

// close ends every watch and connection and waits for the readers.
func (set *watchSet) close() {
	set.closing.Store(true)
	set.cancel()
	set.wg.Wait()
	for _, cc := range set.conns {
		_ = cc.Close()
	}
}

// waitReady waits for every watch's catch-up heartbeat, printing progress.
func (b *bencher) waitReady(ctx context.Context, t *watchTarget, label string, set *watchSet) error {
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i, w := range set.ws {
		for ready := false; !ready; {
			select {
			case <-w.ready:
				ready = true
			case <-tick.C:
				if time.Since(start) > openTimeout {
					return fmt.Errorf("%w: after %v, %d of %d watches have had no catch-up heartbeat", ErrCallFailed, openTimeout, len(set.ws)-i, len(set.ws))
				}
				b.progress("%-10s open    %3.0fs  %9s of %s watches live  rss %s", label,
					time.Since(start).Seconds(), group(float64(countReady(set.ws))), group(float64(len(set.ws))), mb(b.rssNow(ctx, t)))
			case <-ctx.Done():
				return ctx.Err()
			case <-t.done():
				return exitErr(t.srv)
			}
		}
	}
	return set.failed()
}

func countReady(ws []*watcher) int {
	n := 0
	for _, w := range ws {
		select {
		case <-w.ready:
			n++
		default:
		}
	}
	return n
}

// watchUsers makes n users with a device token each.
func (b *bencher) watchUsers(tag string, n int) ([]*watchUser, error) {
	users := make([]*watchUser, n)
	for i := range users {
		u := &watchUser{name: fmt.Sprintf("b%s-r%d%s-u%d", b.id, b.run, tag, i)}
		var err error
		if u.auth, err = b.deviceAuth(u.name); err != nil {
			return nil, err
		}
		users[i] = u
	}
	return users, nil
}

// deliveryScenario opens Watchers watches over WatchUsers users, then
// commits one PUT at a time to those users, paced at DeliveryRate commits/s
// in all, and times each commit from sending it to each of its user's
// watchers receiving its version; every watcher must receive every version
// after its catch-up, in order.
func (b *bencher) deliveryScenario(ctx context.Context, vals map[string]float64) error {
	users, err := b.watchUsers("-dw", b.cfg.WatchUsers)
	if err != nil {
		return err
	}
	epoch := time.Now()
	clock := func() time.Duration { return time.Since(epoch) }
	deliver := func(u *watchUser, v uint64, at time.Duration) {
		u.mu.Lock()
		if i := v - 1; i < uint64(len(u.sent)) && u.sent[i].measured {
			u.arrivals = append(u.arrivals, arrival{v, at})
		}
		u.mu.Unlock()
	}
	t := b.mainTarget()
	set, err := b.openWatches(ctx, t, "-dw", b.cfg.Watchers, users, deliver, clock)
	if err != nil {
		return err
	}
	defer b.closeWatches(ctx, t, string(Delivery), set)
	t0 := time.Now()
	if err := b.waitReady(ctx, t, string(Delivery), set); err != nil {
		return err
	}
	b.progress("%-10s %s watches over %d users on %d h2c connection%s live in %.2fs; committing %s/s",
		Delivery, group(float64(len(set.ws))), len(users), len(set.conns), plural(len(set.conns)), time.Since(t0).Seconds(), group(b.cfg.DeliveryRate))

	var measuring atomic.Bool
	keyAuth := authorization(b.key)
	committer := b.clients
	if b.cfg.CommitURL != "" {
		var err error
		if committer, err = newClients(b.cfg, b.cfg.CommitURL); err != nil {
			return err
		}
		defer committer.close()
	}
	workers := make([]call, len(users))
	for i, u := range users {
		value := make([]byte, b.cfg.ValueBytes)
		for j := range value {
			value[j] = 'd'
		}
		req := &dalvv1.CommitRequest{User: u.name, Ops: []*dalvv1.Op{{
			Kind: dalvv1.OpKind_OP_KIND_PUT, Key: fmt.Sprintf("delivery/u%d", i),
			Value: &dalvv1.Value{Kind: &dalvv1.Value_Scalar{Scalar: value}},
		}}}
		workers[i] = func(ctx context.Context) error {
			u.mu.Lock()
			want := uint64(len(u.sent)) + 1 // the bench's users are new: version 0
			putNumber(value, want)
			u.sent = append(u.sent, sentCommit{at: clock(), measured: measuring.Load()})
			u.mu.Unlock()
			creq := connect.NewRequest(req)
			creq.Header()["Authorization"] = keyAuth
			resp, err := committer.backend.Commit(ctx, creq)
			if err != nil {
				return fmt.Errorf("commit %d to %s: %w", want, u.name, err)
			}
			if v := resp.Msg.GetVersion(); v != want {
				return fmt.Errorf("%w: commit to %s made version %d, want %d", ErrWrongAnswer, u.name, v, want)
			}
			u.head.Store(want)
			return nil
		}
	}
	var lastRecv atomic.Uint64
	res, err := b.load(ctx, loadSpec{
		label: string(Delivery), unit: "commits/s", workers: workers,
		interval: time.Duration(float64(time.Second) * float64(len(workers)) / b.cfg.DeliveryRate),
		measuring: func() func() error {
			measuring.Store(true)
			return nil
		},
		status: func(elapsed time.Duration) string {
			n := set.received.Load()
			return fmt.Sprintf("  %s deliveries/s", group(float64(n-lastRecv.Swap(n))/elapsed.Seconds()))
		},
	})
	if err != nil {
		return err
	}
	if err := b.drainDeliveries(ctx, set); err != nil {
		return err
	}

	// lat: from sending each measured commit to each watcher receiving it;
	// fanout: from its first watcher receiving it to each of the others.
	var lat, fanout histogram
	var missed uint64
	for _, u := range users {
		u.mu.Lock()
		first := make(map[uint64]time.Duration)
		for _, a := range u.arrivals {
			if f, ok := first[a.version]; !ok || a.at < f {
				first[a.version] = a.at
			}
		}
		for _, a := range u.arrivals {
			lat.Record(a.at - u.sent[a.version-1].at)
			fanout.Record(a.at - first[a.version])
		}
		u.mu.Unlock()
	}
	for _, w := range set.ws {
		// Every version after the catch-up, once, in order.
		head, start := w.user.head.Load(), w.start.Load()
		missed += w.repeats.Load()
		if want := head - min(start, head); w.inOrder.Load() < want {
			missed += want - w.inOrder.Load()
		}
	}
	b.progress("%-10s %s commits/s: %s deliveries, p50 %.2f ms, p99 %.2f ms, max %.2f ms (fan-out p99 %.2f ms, commit p99 %.2f ms), missed %d",
		Delivery, group(res.rate()), group(float64(lat.Count())),
		ms(lat.Quantile(0.50)), ms(lat.Quantile(0.99)), ms(lat.Quantile(1)), ms(fanout.Quantile(0.99)), ms(res.hist.Quantile(0.99)), missed)
	vals[metricID(Delivery, "p50")] = ms(lat.Quantile(0.50))
	vals[metricID(Delivery, "p99")] = ms(lat.Quantile(0.99))
	vals[metricID(Delivery, "max")] = ms(lat.Quantile(1))
	vals[metricID(Delivery, "fanout_p99")] = ms(fanout.Quantile(0.99))
	vals[metricID(Delivery, "deliveries")] = float64(lat.Count())
	vals[metricID(Delivery, "missed")] = float64(missed)
	vals[metricID(Delivery, "commit_rate")] = res.rate()
	vals[metricID(Delivery, "commit_p99")] = ms(res.hist.Quantile(0.99))
	if b.srv != nil {
		vals[metricID(Delivery, "server_cores")] = res.cores(res.cpu.server)
	}
	vals[metricID(Delivery, "bench_cores")] = res.cores(res.cpu.self)
	vals[metricID(Delivery, "other_cores")] = res.cores(res.cpu.others())
	return nil
}

// drainDeliveries waits for every watcher to have received its user's last
// committed version, or for drainTimeout, and fails on a watch that ended.
func (b *bencher) drainDeliveries(ctx context.Context, set *watchSet) error {
	deadline := time.Now().Add(drainTimeout)
	for {
		if err := set.failed(); err != nil {
			return err
		}
		behind := 0
		for _, w := range set.ws {
			if w.last.Load() < w.user.head.Load() {
				behind++
			}
		}
		if behind == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			b.progress("%-10s %d watchers still behind their user's last commit after %v", Delivery, behind, drainTimeout)
			return nil // the missing deliveries count as missed
		}
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// closeWatches ends the set's watches and waits for the server to let go
// of them, so the next measurement starts from a server without them.
func (b *bencher) closeWatches(ctx context.Context, t *watchTarget, label string, set *watchSet) {
	set.close()
	deadline := time.Now().Add(closeTimeout)
	for {
		st, err := b.serverStats(ctx, t)
		if err != nil || st.watches == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.progress("%-10s the server still counts %.0f open watches %v after they closed", label, st.watches, closeTimeout)
			return
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return
		}
	}
}

// idleScenario weighs idle watches: the resident memory of a server before
// IdleWatchers watches over IdleUsers users are opened (after a small
// warm-up and a garbage collection, settled) and once all have had their
// catch-up heartbeat and the memory has settled again, per watcher.
//
// The server is one the scenario starts for each run, with the bench's
// flags: a Go server keeps memory it once used (the runtime returns it to
// the system slowly), so the bench's own server, which has held earlier
// runs' watches and loads, would take new watches into memory it already
// holds and weigh them at next to nothing. With --url it is that server,
// with that caveat.
func (b *bencher) idleScenario(ctx context.Context, vals map[string]float64) error {
	label := string(IdleWatchers)
	t := b.mainTarget()
	if b.srv != nil {
		data := filepath.Join(b.dir, fmt.Sprintf("idle-run%d", b.run))
		srv, pprofAddr, err := b.spawnServer(ctx, data, true)
		if err != nil {
			return err
		}
		defer func() {
			if err := srv.Stop(10 * time.Second); err != nil && exitErr(srv) == nil {
				fmt.Fprintf(b.out, "stop the idle-watchers server: %v\n", err)
			}
			if !b.cfg.KeepData {
				_ = os.RemoveAll(data)
			}
		}()
		t = &watchTarget{url: srv.URL(), srv: srv, pprofAddr: pprofAddr}
		b.progress("%-10s server pid %d on %s of its own", label, srv.PID(), t.url)
	}
	// Warm-up: the code paths and pools a first watch takes, not counted.
	users, err := b.watchUsers("-iw0", 10)
	if err != nil {
		return err
	}
	set, err := b.openWatches(ctx, t, "-iw0", len(users), users, nil, nil)
	if err != nil {
		return err
	}
	err = b.waitReady(ctx, t, label, set)
	b.closeWatches(ctx, t, label, set)
	if err != nil {
		return err
	}

	// Before: garbage collected (when the server serves pprof), settled.
	b.serverGC(ctx, t)
	before, err := b.settledRSS(ctx, t)
	if err != nil {
		return err
	}
	stats0, err := b.serverStats(ctx, t)
	if err != nil {
		return err
	}

	if users, err = b.watchUsers("-iw", b.cfg.IdleUsers); err != nil {
		return err
	}
	t0, cpu0, srvCPU0 := time.Now(), b.mon.cpu(), t.cpu()
	if set, err = b.openWatches(ctx, t, "-iw", b.cfg.IdleWatchers, users, nil, nil); err != nil {
		return err
	}
	defer b.closeWatches(ctx, t, label, set)
	if err := b.waitReady(ctx, t, label, set); err != nil {
		return err
	}
	openTime := time.Since(t0)
	n := float64(len(set.ws))
	st, err := b.serverStats(ctx, t)
	if err != nil {
		return err
	}
	if st.watches-stats0.watches != n {
		return fmt.Errorf("%w: %s watches are live but the server counts %.0f more than before", ErrWrongAnswer, group(n), st.watches-stats0.watches)
	}
	after, err := b.settledRSS(ctx, t)
	if err != nil {
		return err
	}
	if err := set.failed(); err != nil {
		return err
	}
	cpu := b.mon.cpu().sub(cpu0)
	if t.srv != b.srv {
		cpu.server += t.cpu() - srvCPU0 // not another process's
	}
	elapsed := time.Since(t0)
	// The breakdown, after a collection so the heap is what the watches hold.
	b.serverGC(ctx, t)
	stats1, err := b.serverStats(ctx, t)
	if err != nil {
		return err
	}
	perWatcher := float64(after-before) / n
	heap, stacks, goroutines := (stats1.heapAlloc-stats0.heapAlloc)/n, (stats1.stackInuse-stats0.stackInuse)/n, (stats1.goroutines-stats0.goroutines)/n
	b.progress("%-10s %s watches over %s users on %d h2c connection%s live in %.2fs: RSS %s -> %s, %.1f KiB each "+
		"(Go heap %.1f KiB, stacks %.1f KiB, %.2f goroutines)",
		label, group(n), group(float64(len(users))), len(set.conns), plural(len(set.conns)), openTime.Seconds(),
		mb(before), mb(after), perWatcher/1024, heap/1024, stacks/1024, goroutines)
	vals[metricID(IdleWatchers, "per_watcher")] = perWatcher / 1024
	vals[metricID(IdleWatchers, "rss_before")] = float64(before)
	vals[metricID(IdleWatchers, "rss_after")] = float64(after)
	vals[metricID(IdleWatchers, "heap_per_watcher")] = heap / 1024
	vals[metricID(IdleWatchers, "stack_per_watcher")] = stacks / 1024
	vals[metricID(IdleWatchers, "goroutines_per_watcher")] = goroutines
	vals[metricID(IdleWatchers, "open_time")] = openTime.Seconds()
	vals[metricID(IdleWatchers, "other_cores")] = cpu.others().Seconds() / elapsed.Seconds()
	return nil
}

// cpu is the CPU time the server has used, if the bench started it.
func (t *watchTarget) cpu() time.Duration {
	if t.srv == nil {
		return 0
	}
	d, _ := processCPU(t.srv.PID())
	return d
}

// rssNow is the server's resident memory: sampled from /proc when the bench
// started it, else as the server reports it on /metrics; 0 if unknown.
func (b *bencher) rssNow(ctx context.Context, t *watchTarget) int64 {
	if t.srv != nil {
		rss, _ := proc.RSS(t.srv.PID())
		return rss
	}
	st, _ := b.serverStats(ctx, t)
	return int64(st.rss)
}

// settledRSS samples the server's resident memory until settleWindow
// samples in a row lie within settleBytes, or for settleMax, and returns the
// last sample.
func (b *bencher) settledRSS(ctx context.Context, t *watchTarget) (int64, error) {
	deadline := time.Now().Add(settleMax)
	var window []int64
	for {
		rss := b.rssNow(ctx, t)
		if window = append(window, rss); len(window) > settleWindow {
			window = window[1:]
		}
		if len(window) == settleWindow && slices.Max(window)-slices.Min(window) <= settleBytes || time.Now().After(deadline) {
			return rss, nil
		}
		select {
		case <-time.After(sampleEvery):
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-t.done():
			return 0, exitErr(t.srv)
		}
	}
}

// serverStats are figures the server publishes on /metrics.
type serverStats struct {
	watches, goroutines, heapAlloc, stackInuse, rss float64
}

func (b *bencher) serverStats(ctx context.Context, t *watchTarget) (serverStats, error) {
	var st serverStats
	fams, err := b.scrapeMetrics(ctx, t.url)
	if err != nil {
		return st, err
	}
	for name, p := range map[string]*float64{
		"dalv_device_watches":           &st.watches,
		"go_goroutines":                 &st.goroutines,
		"go_memstats_heap_alloc_bytes":  &st.heapAlloc,
		"go_memstats_stack_inuse_bytes": &st.stackInuse,
		"process_resident_memory_bytes": &st.rss,
	} {
		*p, _ = value(fams, name)
	}
	return st, nil
}

// serverGC has the server collect its garbage twice, through its pprof
// listener (a heap profile with gc=1), when it has one: twice, because
// what sync.Pools hold survives one collection.
func (b *bencher) serverGC(ctx context.Context, t *watchTarget) {
	if t.pprofAddr == "" {
		return
	}
	for range 2 {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+t.pprofAddr+"/debug/pprof/heap?gc=1", nil)
		if err != nil {
			return
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
	}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// watchLines describes the watch scenarios' settings, for the table.
func (s Settings) watchLines(ran func(Scenario) bool) string {
	var b strings.Builder
	if ran(Delivery) {
		fmt.Fprintf(&b, "delivery: %s device watches over %d users (%d streams per h2c connection), then %s backend commits/s of one PUT across those users, "+
			"each user's one at a time; latency from sending a commit to a watcher's stream delivering its version.\n",
			group(float64(s.Watchers)), s.WatchUsers, streamsPerConn, group(s.DeliveryRate))
	}
	if ran(IdleWatchers) {
		fmt.Fprintf(&b, "idle-watchers: %s device watches over %s users (%d streams per h2c connection), on a server started for each run; its RSS before opening them "+
			"(after a garbage collection, settled) and once every one has had its catch-up heartbeat and the RSS has settled; "+
			"Go heap and stacks from its /metrics, after another collection.\n",
			group(float64(s.IdleWatchers)), group(float64(s.IdleUsers)), streamsPerConn)
	}
	return b.String()
}
