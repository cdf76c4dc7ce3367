package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/anishathalye/porcupine"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	hist "github.com/dalvdb/dalv/internal/history"
	"github.com/dalvdb/dalv/internal/pgtest"
	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/internal/wait"
)

// This file checks histories: devices and backends call real servers at
// once, every call and its outcome is recorded, and internal/history checks
// each partition's history against the sync rules. DALV_HISTORY_SECONDS
// makes a run longer (make check-history), DALV_HISTORY_SEED replays one.

// TestHistoryOneNode checks a history of one node on the embedded store.
func TestHistoryOneNode(t *testing.T) {
	t.Parallel()
	checkHistory(t, []*proc.Server{startServer(t)}, historyRun(3*time.Second), nil, nil)
}

// TestHistoryPostgres checks a history of three nodes over PostgreSQL, each
// device and backend on its own node. The second user's values are past 4
// KiB, so that the nodes commit to its partition on sparse states.
func TestHistoryPostgres(t *testing.T) {
	t.Parallel()
	nodes, _ := pgNodes(t, pgtest.Server(t), 3)
	checkHistory(t, nodes, historyRun(3*time.Second), &historyRound{users: "hist", cursor: "start", bigValues: true}, nil)
}

// TestHistoryPostgresOneNode checks a history of one node over PostgreSQL:
// with no other node to move the heads on, it commits on the partitions'
// held states, the first user's whole and the second's (values past 4 KiB)
// sparse, in grouped statements.
func TestHistoryPostgresOneNode(t *testing.T) {
	t.Parallel()
	nodes, _ := pgNodes(t, pgtest.Server(t), 1)
	checkHistory(t, nodes, historyRun(3*time.Second), &historyRound{users: "hist", cursor: "start", bigValues: true}, nil)
}

// TestHistoryCitus checks a history of three nodes over Citus, each
// device and backend on its own node.
func TestHistoryCitus(t *testing.T) {
	t.Parallel()
	nodes, _ := pgNodes(t, pgtest.Citus(t), 3)
	checkHistory(t, nodes, historyRun(3*time.Second), nil, nil)
}

// TestHistoryPages checks a history of one node whose answers are cut in
// pages of a few changes (--max-response-bytes of about three), so that syncs
// and pulls are answered in pages, each checked against the changes up to
// its cut, and devices go on from the cut.
func TestHistoryPages(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "--max-key-bytes", "8", "--max-value-bytes", "64", "--max-response-bytes", "240")
	checkHistory(t, []*proc.Server{srv}, historyRun(3*time.Second), nil, nil)
}

// TestHistoryPostgresFaults checks a history of three nodes over a
// PostgreSQL server of the test's own while the network between two of
// them and the database fails (connections cut, then black-holed for
// longer than the nodes' statement timeout) and the server is killed and
// restarted (pg_ctl -m immediate), the second user's values past 4 KiB (so
// that the nodes commit to its partition on sparse states). Every sync and commit is then
// acknowledged and present, refused and absent, or of unknown outcome and
// settled by its retry exactly once: the history checker says which.
func TestHistoryPostgresFaults(t *testing.T) {
	t.Parallel()
	pg, proxy, nodes := faultyPostgres(t)
	checkHistory(t, nodes, historyRun(4*time.Second), &historyRound{users: "hist", cursor: "start", bigValues: true}, func(pause func(time.Duration) bool) string {
		var cuts, holes, restarts int
		for pause(400 * time.Millisecond) {
			proxy.SetDown(true) // connections cut, new ones refused
			cuts++
			pause(200 * time.Millisecond)
			proxy.SetDown(false)
			if !pause(400 * time.Millisecond) {
				break
			}
			proxy.SetDelay(2 * time.Second) // black-holed past the statement timeout, mid-commit
			holes++
			pause(1500 * time.Millisecond)
			proxy.SetDelay(0)
			if !pause(400 * time.Millisecond) {
				break
			}
			if err := pg.RestartImmediate(); err != nil {
				t.Error(err)
				break
			}
			restarts++
		}
		return fmt.Sprintf("%d connection cuts, %d black holes of 2s, %d PostgreSQL kills (-m immediate)", cuts, holes, restarts)
	})
}

// historyRun is how long a history test runs: DALV_HISTORY_SECONDS, or
// dflt.
func historyRun(dflt time.Duration) time.Duration {
	if n, err := strconv.Atoi(os.Getenv("DALV_HISTORY_SECONDS")); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	return dflt
}

// poolsGiveBack waits until no node over PostgreSQL holds a pool
// connection, now that no call is running (the feed reader and watches
// hold none): one still held after a fault is a leak, and would in the end
// exhaust the pool.
func poolsGiveBack(t *testing.T, nodes []*proc.Server) {
	t.Helper()
	for i, srv := range nodes {
		err := wait.Until(30*time.Second, func() error {
			fams, err := scrapeErr(srv)
			if err != nil {
				return err
			}
			m := metric(fams, "dalv_postgres_pool_connections", map[string]string{"state": "acquired"})
			if m != nil && m.GetGauge().GetValue() > 0 {
				return fmt.Errorf("node %d holds %v PostgreSQL connections with no call running", i+1, m.GetGauge().GetValue())
			}
			return nil
		})
		if err == nil {
			continue
		}
		// Where the connection is held: the node's goroutines in the
		// PostgreSQL store and its driver, dumped by SIGQUIT.
		_ = syscall.Kill(srv.PID(), syscall.SIGQUIT)
		select {
		case <-srv.Done():
		case <-time.After(10 * time.Second):
		}
		var stacks []string
		for _, g := range strings.Split(srv.Stderr(), "\n\n") {
			if strings.HasPrefix(g, "goroutine ") && (strings.Contains(g, "store/postgres") || strings.Contains(g, "pgx")) {
				stacks = append(stacks, g)
			}
		}
		t.Errorf("%v; its goroutines in the PostgreSQL store and driver:\n%s", err, strings.Join(stacks, "\n\n"))
	}
}

// commitWays says how nodes over PostgreSQL wrote their commits, from their
// /metrics: grouped on held states, as transactions or in calls, and how
// many reads sparse states made; "" for nodes on the embedded store.
func commitWays(nodes []*proc.Server) string {
	var grouped, tx, calls, reads float64
	for _, srv := range nodes {
		fams, err := scrapeErr(srv)
		if err != nil {
			continue
		}
		for way, n := range map[string]*float64{"grouped": &grouped, "transaction": &tx, "call": &calls} {
			if m := metric(fams, "dalv_postgres_commits_total", map[string]string{"way": way}); m != nil {
				*n += m.GetCounter().GetValue()
			}
		}
		if m := metric(fams, "dalv_postgres_held_reads_total", nil); m != nil {
			reads += m.GetCounter().GetValue()
		}
	}
	if grouped+tx+calls == 0 {
		return ""
	}
	return fmt.Sprintf("the nodes committed %.0f times grouped on held states, %.0f as transactions and %.0f in calls (on Citus); sparse states read %.0f times", grouped, tx, calls, reads)
}

// faultyPostgres starts a PostgreSQL server of t's own (synchronous
// commits) and three nodes over it, the first two through a proxy that can
// cut or black-hole their connections. The nodes give up on a statement
// after 1 s.
func faultyPostgres(t *testing.T) (*pgtest.Throwaway, *pgtest.Proxy, []*proc.Server) {
	pg, err := pgtest.StartDurable()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Stop)
	_, direct := pgtest.SchemaOn(t, pg.URL)
	proxy, cut := pgtest.NewProxy(t, direct)
	args := []string{"--store-timeout", "1s", "--heartbeat", "2s"}
	return pg, proxy, []*proc.Server{
		startServer(t, append([]string{"--store", cut}, args...)...),
		startServer(t, append([]string{"--store", cut}, args...)...),
		startServer(t, append([]string{"--store", direct}, args...)...),
	}
}

// historyRound is one history among several run one after another against
// the same nodes: the prefix of its users' names, and the feed cursor to
// follow from, which the round leaves where its feed reader ended.
type historyRound struct {
	users  string
	cursor string
	faults string // what is injected meanwhile by others, for the log
	// bigValues pads the PUTs of every second user past 4 KiB (see
	// valuePad).
	bigValues bool
}

// checkHistory runs devices and backends against nodes for run
// (and faults, when given, at the same time: it pauses between faults
// until the run ends, and says what it injected), then checks the history
// and logs what it checked. round, when given, names its users and where
// its feed reader starts; else the users are hist0, hist1... and the
// reader starts from the feed's start.
func checkHistory(t *testing.T, nodes []*proc.Server, run time.Duration, round *historyRound, faults func(pause func(time.Duration) bool) string) {
	if round == nil {
		round = &historyRound{users: "hist", cursor: "start"}
	}
	userName := func(u int) string {
		if round.bigValues && u%2 == 1 {
			return round.users + bigUser + strconv.Itoa(u)
		}
		return round.users + strconv.Itoa(u)
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("DALV_HISTORY_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	const users, devicesPerUser, backends = historyUsers, 3, 2
	rec := hist.NewRecorder()
	live := &feedReader{}
	feedCtx, stopFeed := context.WithCancel(context.Background())
	feedDone := make(chan struct{}, 1+users) // the feed reader's and the watches'
	go func() { defer func() { feedDone <- struct{}{} }(); live.follow(feedCtx, nodes[0], round.cursor) }()
	defer func() {
		stopFeed()
		for range 1 + users {
			<-feedDone
		}
	}()
	// Calls are also cut at random, unless faults leave calls unanswered
	// already: more unanswered calls would widen the check's search.
	cut := faults == nil && round.faults == ""
	var names []string
	for u := range users {
		names = append(names, userName(u))
	}
	deadline := time.Now().Add(run)
	// A device of each user watches its partition on another node than
	// the user's first device.
	watches := make([]*watchReader, users)
	for u := range watches {
		w, srv := &watchReader{}, nodes[(u+1)%len(nodes)]
		watches[u] = w
		dc := deviceClient(t, srv, userName(u))
		go func() { defer func() { feedDone <- struct{}{} }(); w.follow(feedCtx, dc, "watcher") }()
	}
	var wg sync.WaitGroup
	client := 0
	for u := range users {
		user := userName(u)
		for d := range devicesPerUser {
			srv := nodes[(u+d)%len(nodes)]
			dc := deviceClient(t, srv, user)
			id, rng := client, rand.New(rand.NewPCG(seed, uint64(client)))
			client++
			wg.Go(func() {
				historyDevice(t, rec, dc, id, user, fmt.Sprintf("%s-dev%d", user, d), rng, deadline, cut)
			})
		}
	}
	for b := range backends {
		bc := backendClient(t, nodes[b%len(nodes)])
		id, rng := client, rand.New(rand.NewPCG(seed, uint64(client)))
		client++
		wg.Go(func() { historyBackend(t, rec, bc, id, names, rng, deadline, cut) })
	}
	injected := "no faults"
	if round.faults != "" {
		injected = round.faults
	}
	if faults != nil {
		wg.Go(func() {
			injected = faults(func(d time.Duration) bool {
				if time.Until(deadline) < d {
					return false
				}
				time.Sleep(d) // the faults' schedule, not a synchronisation
				return true
			})
		})
	}
	wg.Wait()
	final := finalVersions(t, nodes[len(nodes)-1], names)
	poolsGiveBack(t, nodes)
	if ways := commitWays(nodes); ways != "" {
		t.Log(ways)
	}
	feed := checkFeeds(t, nodes, live, final)
	t.Log(feed)
	if events, _ := live.snapshot(); len(events) > 0 {
		round.cursor = events[len(events)-1].cursor
	}
	events, breaks := 0, 0
	for u, w := range watches {
		user := userName(u)
		checkWatch(t, w, nodes[len(nodes)-1], user, final["user:"+user])
		w.mu.Lock()
		events, breaks = events+w.events, breaks+w.breaks
		w.mu.Unlock()
	}
	t.Logf("watches: %d devices' watches took %d events (resumed %d times) to each partition's final keys", len(watches), events, breaks)
	checkStart := time.Now()
	calls := rec.Calls()
	kinds, pulls, paged := map[hist.Kind]int{}, 0, 0
	for _, c := range calls {
		kinds[c.Kind]++
		if c.Kind == hist.Sync && len(c.Ops) == 0 {
			pulls++
		}
		if c.Kind == hist.Sync && c.More {
			paged++
		}
	}
	// Porcupine's search grows with the calls left without an answer: a
	// 30 s fault history has taken from under a second to over a minute.
	r := hist.Check(calls, max(2*time.Minute, 4*run))
	t.Logf("history: %d calls (%d syncs, %d pulls, %d of them answered in pages, %d commits, %d gets, %d list pages; %d of unknown outcome, %d of them open to the end) on %d partitions, %d nodes, %s, checked in %v; seed %d",
		r.Calls, kinds[hist.Sync]-pulls, pulls, paged, kinds[hist.Commit], kinds[hist.Get], kinds[hist.List], r.Unknown, r.Open, r.Partitions, len(nodes), injected, time.Since(checkStart).Round(time.Millisecond), seed)
	if !r.OK() {
		// Kept after the test: the history, to check again with more
		// time (hist.Load, hist.Check), and Porcupine's view of it.
		dir, err := os.MkdirTemp("", "dalv-history-")
		if err == nil {
			if err := hist.Save(filepath.Join(dir, "calls.json"), calls); err == nil {
				t.Logf("the history: %s", filepath.Join(dir, "calls.json"))
			}
			if err := porcupine.VisualizePath(hist.Model(), r.Info, filepath.Join(dir, "hist.html")); err == nil {
				t.Logf("Porcupine's view of the history: %s", filepath.Join(dir, "hist.html"))
			}
		}
		for _, h := range r.Failed {
			// (Illegal): no order of the calls keeps the rules; (Unknown):
			// the check ran out of time before it could tell.
			t.Errorf("not shown linearizable (seed %d, DALV_HISTORY_SEED=%d replays the choices):\n%s", seed, seed, h)
		}
	}
}

// historyUsers is how many partitions a history writes.
const historyUsers = 2

// historyKeys are the scalar keys the history writes, historyLists its
// lists, and historyElems the lists' elements: few, so writes meet.
var (
	historyKeys  = []string{"k0", "k1", "k2"}
	historyLists = []string{"l0", "l1"}
	historyElems = []string{"e0", "e1", "e2", "e3"}
)

// historyOps are one or two ops labelled label: mostly PUTs of label, some
// DELETEs, and list ops, which merge with each other but conflict with a
// DELETE. Scalar keys only get PUTs and DELETEs and lists only list ops and
// DELETEs, so no op is refused for its key's kind.
func historyOps(rng *rand.Rand, label string) []hist.Op {
	out := make([]hist.Op, rng.IntN(2)+1)
	for i := range out {
		switch n := rng.IntN(20); {
		case n < 11:
			out[i] = hist.Op{Kind: hist.Put, Key: historyKeys[rng.IntN(len(historyKeys))], Value: label}
		case n < 12:
			out[i] = hist.Op{Kind: hist.Delete, Key: historyKeys[rng.IntN(len(historyKeys))]}
		case n < 13:
			out[i] = hist.Op{Kind: hist.Delete, Key: historyLists[rng.IntN(len(historyLists))]}
		default:
			kind := hist.ListAdd
			if n >= 18 {
				kind = hist.ListRemove
			}
			out[i] = hist.Op{Kind: kind, Key: historyLists[rng.IntN(len(historyLists))], Value: historyElems[rng.IntN(len(historyElems))]}
		}
	}
	return out
}

// wireOps are ops of user's as the API takes them; a PUT's value is a JSON
// string.
func wireOps(user string, ops []hist.Op) []*dalvv1.Op {
	out := make([]*dalvv1.Op, len(ops))
	for i, o := range ops {
		switch o.Kind {
		case hist.Put:
			v := o.Value
			if bigValues(user) {
				v += valuePad
			}
			out[i] = opPut(o.Key, strconv.Quote(v))
		case hist.Delete:
			out[i] = opDelete(o.Key)
		case hist.ListAdd:
			out[i] = opAdd(o.Key, o.Value)
		case hist.ListRemove:
			out[i] = opRemove(o.Key, o.Value)
		}
	}
	return out
}

// historyValue is a value read as the history model shows it.
func historyValue(v *dalvv1.Value) string {
	if l := v.GetList(); l != nil {
		items := make([]string, len(l.GetItems()))
		for i, it := range l.GetItems() {
			items[i] = string(it)
		}
		return hist.Show("", items, true)
	}
	s, _ := strconv.Unquote(string(v.GetScalar()))
	s, _, _ = strings.Cut(s, valuePad[:1])
	return hist.Show(s, nil, false)
}

// valuePad pads the PUTs of a history's users named with bigUser (see
// historyRound.bigValues), and historyValue cuts it off: no label has its
// first byte. A node over PostgreSQL holds no partition with a value past 4
// KiB whole, so such users' commits go through sparse states (see
// docs/postgres.md), where the others' go through whole ones.
var valuePad = "|" + strings.Repeat("-", 5<<10)

// bigUser marks the names of users whose PUTs are padded.
const bigUser = "big"

// bigValues reports whether user's PUTs are padded with valuePad.
func bigValues(user string) bool { return strings.Contains(user, bigUser) }

// callCtx is a call's context: most calls have time to answer; with cut,
// about one in ten is cut after a millisecond or two, so its outcome is
// unknown. (Under injected faults the faults give the unknown outcomes: more
// would make the check's search, which grows with them, take too long.)
func callCtx(rng *rand.Rand, cut bool) (context.Context, context.CancelFunc) {
	if cut && rng.IntN(10) == 0 {
		return context.WithTimeout(context.Background(), time.Duration(rng.IntN(2000)+200)*time.Microsecond)
	}
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// outcome is what an error says of a call: unknown when the call was cut
// or the server unreachable, or the test fails on a refusal the history
// does not expect.
func outcome(t *testing.T, err error, expected ...connect.Code) (hist.Outcome, bool) {
	if err == nil {
		return hist.OK, true
	}
	code := connect.CodeOf(err)
	for _, c := range expected {
		if code == c {
			return hist.Stale, true
		}
	}
	if errors.Is(err, context.DeadlineExceeded) || code == connect.CodeDeadlineExceeded || code == connect.CodeCanceled || code == connect.CodeUnavailable {
		return hist.Unknown, true
	}
	t.Errorf("unexpected refusal: %v", err)
	return hist.Unknown, false
}

// rateLimited reports whether err is the refusal of a device's call by the
// server's per-user rate limit (--rate-limit), which it answers before
// reading the call: the call changed nothing, is left out of the history,
// and is sent again after a pause, as the Go SDK does. A history on one
// node gives each user's devices and watch to one server, and after a
// fault their retries can pass the default limit.
func rateLimited(err error) bool {
	return connect.CodeOf(err) == connect.CodeResourceExhausted && strings.Contains(err.Error(), "(--rate-limit)")
}

// historyDevice syncs batches of ops until the deadline: after a conflict
// it sends the batch again from the new base (keeping its own values), and
// after an unknown outcome it sends the same batch again, as a device does,
// past the deadline too until it is accepted (a batch refused for a
// conflict may still apply from an earlier send that got no answer).
func historyDevice(t *testing.T, rec *hist.Recorder, dc interface {
	Sync(context.Context, *connect.Request[dalvv1.SyncRequest]) (*connect.Response[dalvv1.SyncResponse], error)
}, client int, user, device string, rng *rand.Rand, deadline time.Time, cut bool) {
	var base, batch uint64
	var puts []hist.Op
	var backoff time.Duration
	unsettled := false // the batch got no answer once and is not accepted yet
	for time.Now().Before(deadline) || unsettled && time.Now().Before(deadline.Add(settleTime)) {
		if puts == nil && rng.IntN(4) == 0 {
			// A pull: the changes after base, without a batch.
			if v, ok := historyPull(t, rec, dc, client, user, device, base, rng, cut); !ok {
				return
			} else if v > 0 {
				base = v
			}
			continue
		}
		if puts == nil {
			batch++
			puts = historyOps(rng, fmt.Sprintf("%s#%d", device, batch))
		}
		req := &dalvv1.SyncRequest{DeviceId: device, BaseVersion: base, Batch: batch, Ops: wireOps(user, puts)}
		c := hist.Call{Partition: "u:" + user, Kind: hist.Sync, Device: device, Batch: batch, Base: base, Ops: puts}
		cctx, cancel := callCtx(rng, cut)
		start := rec.Begin()
		resp, err := dc.Sync(cctx, connect.NewRequest(req))
		cancel()
		if rateLimited(err) {
			backoff = retryAfter(backoff)
			time.Sleep(backoff) // a device backs off while the server refuses it
			continue
		}
		var ok bool
		if c.Outcome, ok = outcome(t, err); !ok {
			return
		}
		if err == nil {
			c.Version = resp.Msg.GetVersion()
			if resp.Msg.GetStatus() == dalvv1.SyncStatus_SYNC_STATUS_CONFLICT {
				c.Outcome = hist.Conflict
			}
			pulled(&c, resp.Msg)
		}
		rec.End(client, start, c)
		switch c.Outcome {
		case hist.OK:
			base, puts, backoff, unsettled = c.Version, nil, 0, false
		case hist.Conflict:
			base, backoff = c.Version, 0
		case hist.Unknown:
			unsettled = true
			backoff = retryAfter(backoff)
			time.Sleep(backoff) // a device backs off while the server does not answer
		}
	}
}

// historyPull pulls the changes after base as device and records the pull;
// it returns the answer's version (0 for none) and false when the test
// failed.
func historyPull(t *testing.T, rec *hist.Recorder, dc interface {
	Sync(context.Context, *connect.Request[dalvv1.SyncRequest]) (*connect.Response[dalvv1.SyncResponse], error)
}, client int, user, device string, base uint64, rng *rand.Rand, cut bool) (uint64, bool) {
	cctx, cancel := callCtx(rng, cut)
	start := rec.Begin()
	resp, err := dc.Sync(cctx, connect.NewRequest(&dalvv1.SyncRequest{DeviceId: device, BaseVersion: base}))
	cancel()
	if rateLimited(err) {
		time.Sleep(retryAfter(0)) // a device backs off while the server refuses it
		return 0, true
	}
	c := hist.Call{Partition: "u:" + user, Kind: hist.Sync, Device: device, Base: base}
	var ok bool
	if c.Outcome, ok = outcome(t, err); !ok {
		return 0, false
	}
	if err != nil {
		return 0, true // a pull without an answer says nothing
	}
	c.Version = resp.Msg.GetVersion()
	pulled(&c, resp.Msg)
	rec.End(client, start, c)
	return c.Version, true // where the device goes on, the next page's start when cut
}

// pulled records in c the changes a sync's answer gave, and whether it was
// cut in pages, unless the answer was a reset (then the history does not
// check them).
func pulled(c *hist.Call, resp *dalvv1.SyncResponse) {
	c.More = resp.GetMore()
	if resp.GetReset_() {
		return
	}
	c.Pulled = true
	for _, ch := range resp.GetChanges() {
		hc := hist.Change{Key: ch.GetKey(), Deleted: ch.GetDeleted(), Version: ch.GetVersion()}
		if !hc.Deleted {
			hc.Value = historyValue(ch.GetValue())
		}
		c.Changes = append(c.Changes, hc)
	}
}

// historyList reads user's keys under a prefix ("", "k" or "l") in pages
// of one to three keys, each page one call of the history, until the last
// page or a page without an answer; false when the test failed.
func historyList(t *testing.T, rec *hist.Recorder, bc interface {
	List(context.Context, *connect.Request[dalvv1.ListRequest]) (*connect.Response[dalvv1.ListResponse], error)
}, client int, user string, rng *rand.Rand, cut bool) bool {
	prefix := []string{"", "k", "l"}[rng.IntN(3)]
	size := uint32(rng.IntN(3) + 1)
	token, after := "", ""
	for {
		cctx, cancel := callCtx(rng, cut)
		start := rec.Begin()
		resp, err := bc.List(cctx, connect.NewRequest(&dalvv1.ListRequest{User: user, Prefix: prefix, PageSize: size, PageToken: token}))
		cancel()
		c := hist.Call{Partition: "u:" + user, Kind: hist.List, Prefix: prefix, After: after, Values: map[string]string{}}
		var ok bool
		if c.Outcome, ok = outcome(t, err); !ok {
			return false
		}
		if err != nil {
			return true // an unanswered read says nothing; the list ends here
		}
		c.Version = resp.Msg.GetVersion()
		for _, it := range resp.Msg.GetItems() {
			c.Keys = append(c.Keys, it.GetKey())
			c.Values[it.GetKey()] = historyValue(it.GetValue())
		}
		token = resp.Msg.GetNextPageToken()
		c.More = token != ""
		rec.End(client, start, c)
		if !c.More || len(c.Keys) == 0 {
			return true
		}
		after = c.Keys[len(c.Keys)-1]
	}
}

// settleTime is how long after the run a client goes on sending a call
// that got no answer, so that its outcome is settled by an answer.
const settleTime = 30 * time.Second

// retryAfter is a client's next wait after a call that got no answer,
// given its last one: from 20 ms, doubling, up to 500 ms.
func retryAfter(last time.Duration) time.Duration {
	return min(max(2*last, 20*time.Millisecond), 500*time.Millisecond)
}

// historyBackend commits ops, half of them at the version it last saw and
// most under an idempotency key (such a commit that got no answer is sent
// again until it gets one), and reads the keys, by Get or by a List in
// pages of one to three keys, over every user's partition.
func historyBackend(t *testing.T, rec *hist.Recorder, bc interface {
	Commit(context.Context, *connect.Request[dalvv1.CommitRequest]) (*connect.Response[dalvv1.CommitResponse], error)
	Get(context.Context, *connect.Request[dalvv1.GetRequest]) (*connect.Response[dalvv1.GetResponse], error)
	List(context.Context, *connect.Request[dalvv1.ListRequest]) (*connect.Response[dalvv1.ListResponse], error)
}, client int, users []string, rng *rand.Rand, deadline time.Time, cut bool) {
	seen := map[string]uint64{}
	var backoff time.Duration
	var resend *hist.Call // a commit under a key that got no answer
	for n := 0; time.Now().Before(deadline) || resend != nil && time.Now().Before(deadline.Add(settleTime)); n++ {
		user := users[rng.IntN(len(users))]
		if resend != nil {
			user = strings.TrimPrefix(resend.Partition, "u:")
		}
		cctx, cancel := callCtx(rng, cut)
		start := rec.Begin()
		if resend == nil && rng.IntN(4) == 0 {
			cancel()
			if !historyList(t, rec, bc, client, user, rng, cut) {
				return
			}
			continue
		}
		if resend == nil && rng.IntN(3) == 0 {
			// One to three of the keys, so that a get fits the small
			// answers of TestHistoryPages.
			all := append(slices.Clone(historyKeys), historyLists...)
			rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
			keys := all[:rng.IntN(3)+1]
			c := hist.Call{Partition: "u:" + user, Kind: hist.Get, Keys: keys, Values: map[string]string{}}
			resp, err := bc.Get(cctx, connect.NewRequest(&dalvv1.GetRequest{User: user, Keys: keys}))
			cancel()
			var ok bool
			if c.Outcome, ok = outcome(t, err); !ok {
				return
			}
			if err != nil {
				// A read that got no answer changed nothing and says
				// nothing: it is left out of the history.
				backoff = retryAfter(backoff)
				time.Sleep(backoff)
				continue
			}
			c.Version = resp.Msg.GetVersion()
			seen[user] = c.Version
			for _, it := range resp.Msg.GetItems() {
				if !it.GetDeleted() && it.GetValue() != nil {
					c.Values[it.GetKey()] = historyValue(it.GetValue())
				}
			}
			rec.End(client, start, c)
			backoff = 0
			continue
		}
		var c hist.Call
		if resend != nil {
			c = *resend
		} else {
			label := fmt.Sprintf("backend%d#%d", client, n)
			c = hist.Call{Partition: "u:" + user, Kind: hist.Commit, Ops: historyOps(rng, label)}
			if rng.IntN(2) == 0 {
				c.Expect, c.Expected = true, seen[user]
			}
			// A commit with neither an expected version nor a key that
			// gets no answer may apply at any later time, and each one
			// widens the checker's search: under injected faults, which
			// leave many calls unanswered, every such commit has a key.
			if rng.IntN(2) == 0 || !c.Expect && (!cut || rng.IntN(2) == 0) {
				c.Key, c.Device, c.Batch = label, fmt.Sprintf("backend%d", client), uint64(n)
			}
		}
		req := &dalvv1.CommitRequest{User: user, Ops: wireOps(user, c.Ops), IdempotencyKey: c.Key}
		if c.Expect {
			req.ExpectedVersion = &c.Expected
		}
		resp, err := bc.Commit(cctx, connect.NewRequest(req))
		cancel()
		var ok bool
		if c.Outcome, ok = outcome(t, err, connect.CodeFailedPrecondition); !ok {
			return
		}
		if err == nil {
			c.Version = resp.Msg.GetVersion()
			seen[user] = c.Version
		}
		rec.End(client, start, c)
		resend = nil
		if c.Outcome == hist.Unknown && c.Key != "" {
			resend = &c // sent again under its key until it is answered
		}
		if c.Outcome == hist.Unknown {
			backoff = retryAfter(backoff)
			time.Sleep(backoff)
		} else {
			backoff = 0
		}
	}
}
