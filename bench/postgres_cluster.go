package bench

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/internal/proc"
)

// setup creates the bench's schema, with pgbench's tables and DalvDB's in
// it, and the nodes' secrets.
func (pb *pgBench) setup(ctx context.Context) error {
	pb.id = newRunID()
	pb.schema = "dalv_bench_" + pb.id
	u, err := url.Parse(pb.cfg.Store)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return fmt.Errorf("%w: --store %q is not a postgres:// URL", ErrConfig, pb.cfg.Store)
	}
	q := u.Query()
	q.Set("search_path", pb.schema)
	u.RawQuery = q.Encode()
	pb.url = u.String()
	if pb.dir, err = os.MkdirTemp("", "dalv-pgbench-"); err != nil {
		return err
	}
	conn, err := pb.connect(ctx)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", u.Redacted(), err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&pb.version); err != nil {
		return err
	}
	pb.version = "PostgreSQL " + pb.version
	if err := pb.detectCitus(ctx, conn); err != nil {
		return err
	}
	if _, err = conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{pb.schema}.Sanitize()); err != nil {
		return fmt.Errorf("create the bench schema: %w", err)
	}
	if err := pb.setupTx(ctx, conn); err != nil {
		return err
	}
	if err := pb.setupCommit(ctx, conn); err != nil {
		return err
	}
	pb.pgbench = pb.cfg.Pgbench
	if pb.pgbench == "" {
		fmt.Fprintln(pb.out, "pgbench not found (install PostgreSQL's client tools): no comparison")
	}
	pb.secrets, err = newSecrets()
	return err
}

// cleanup drops the bench's schema and files.
func (pb *pgBench) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if conn, err := pb.connect(ctx); err == nil {
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{pb.schema}.Sanitize()+" CASCADE"); err != nil {
			fmt.Fprintf(pb.out, "drop schema %s: %v\n", pb.schema, err)
		}
		_ = conn.Close(ctx)
	}
	if pb.dir != "" {
		_ = os.RemoveAll(pb.dir)
	}
}

// connect opens a connection of the bench's own to the store URL, which may
// hold pgxpool's parameters (pool_max_conns...) for the nodes.
func (pb *pgBench) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgxpool.ParseConfig(pb.cfg.Store)
	if err != nil {
		return nil, err
	}
	return pgx.ConnectConfig(ctx, cfg.ConnConfig)
}

// startNodes starts n nodes on the bench's schema, each with its share of
// the cores (see [nodeProcs]) and an application name that tells its
// connections apart in PostgreSQL.
func (pb *pgBench) startNodes(ctx context.Context, n int) ([]*proc.Server, error) {
	nodes := make([]*proc.Server, 0, n)
	for i := range n {
		nodeURL, _ := url.Parse(pb.url)
		q := nodeURL.Query()
		q.Set("application_name", fmt.Sprintf("dalv-bench-%s-node%d", pb.id, i+1))
		nodeURL.RawQuery = q.Encode()
		s, err := startServe(ctx, pb.cfg.Binary, filepath.Join(pb.dir, "unused"),
			append([]string{"--store", nodeURL.String()}, pb.cfg.ServerArgs...), pb.secrets,
			"GOMAXPROCS="+strconv.Itoa(nodeProcs(n)))
		if err != nil {
			stopNodes(nodes)
			return nil, fmt.Errorf("start node %d: %w", i+1, err)
		}
		nodes = append(nodes, s)
	}
	return nodes, nil
}

// stopNodes stops the nodes.
func stopNodes(nodes []*proc.Server) {
	for _, s := range nodes {
		_ = s.Stop(10 * time.Second)
	}
}

// runNodes starts n nodes, runs the device load spread over them (and the
// watch probes with several nodes), and stops them.
func (pb *pgBench) runNodes(ctx context.Context, n int) (pgSample, *probeTimes, error) {
	nodes, err := pb.startNodes(ctx, n)
	if err != nil {
		return pgSample{}, nil, err
	}
	defer stopNodes(nodes)
	pb.mon = startMonitor(nodes...)
	defer pb.mon.stop()
	ccfg := Config{Devices: pb.cfg.Devices/n + pb.cfg.Probes + 1, Client: pb.cfg.Client}
	clients := make([]*clients, n)
	for i, s := range nodes {
		c, err := newClients(ccfg, s.URL())
		if err != nil {
			return pgSample{}, nil, err
		}
		clients[i] = c
		defer c.close()
	}
	tag := fmt.Sprintf("b%s-r%d-n%d", pb.id, pb.run, n)
	// Each load gets devices of its own: a device whose sync the end of a
	// load cut off does not know its version.
	devices := func(tag string) ([]call, func() bool, error) {
		workers := make([]call, pb.cfg.Devices)
		g := &growth{}
		for i := range workers {
			d, err := pb.newDevice(clients[i%n], fmt.Sprintf("%s-u%d", tag, i), "phone", pb.cfg.ValueBytes, pb.cfg.Keys)
			if err != nil {
				return nil, nil, err
			}
			g.add(d)
			workers[i] = d.sync
		}
		return workers, g.grown, nil
	}
	workers, grown, err := devices(tag)
	if err != nil {
		return pgSample{}, nil, err
	}
	label := nodeCount(n)
	res, err := pb.load(ctx, loadSpec{label: label, unit: "syncs/s", workers: workers, grown: grown})
	if err != nil {
		return pgSample{}, nil, err
	}
	s := sampleOf(res)
	if n > 1 {
		// Again with every node listening for the others' commits, as
		// nodes with watchers do.
		l, err := pb.loadListening(ctx, clients, tag, devices)
		if err != nil {
			return s, nil, err
		}
		s.listening = &l
	}
	var watch probeTimes
	if n > 1 && pb.cfg.Probes > 0 {
		// Commit-to-watcher at half the load the nodes sustain: under a
		// saturated closed loop it measures the queue, not the delivery.
		interval := time.Duration(float64(time.Second) * float64(len(workers)) / (s.rate / 2))
		workers, grown, err := devices(tag + "p")
		if err != nil {
			return s, nil, err
		}
		lctx, cancel := context.WithCancel(ctx)
		waitProbes := pb.startProbes(lctx, clients, tag, &watch)
		win := nodesDuring(ctx, nodes, clients)
		paced, err := pb.load(lctx, loadSpec{label: label + " paced", unit: "syncs/s", workers: workers, interval: interval, grown: grown,
			measuring: win.measuring})
		cancel()
		if perr := waitProbes(); err == nil {
			err = perr
		}
		if err != nil {
			return s, nil, err
		}
		s.pacedRate, s.pacedP99 = paced.rate(), paced.hist.Quantile(0.99)
		s.pacedWakeP99 = paced.wake.Quantile(0.99)
		s.pacedHandlerP99, _ = win.syncP99()
		// And with the probes alone: the delivery itself, unloaded.
		var idle probeTimes
		if err := pb.probesAlone(ctx, clients, tag+"i", &idle); err != nil {
			return s, nil, err
		}
		s.idleWatchP99 = idle.fromSend.Quantile(0.99)
	}
	if err := pb.mon.err(); err != nil {
		return s, nil, err
	}
	line := fmt.Sprintf("%s: %s syncs/s, p99 %.2f ms", label, group(s.rate), ms(s.p99))
	if s.listening != nil {
		line += fmt.Sprintf("; with a watch on each node %s syncs/s", group(s.listening.rate))
	}
	if w := &watch.fromSend; w.Count() > 0 {
		line += fmt.Sprintf("; at %s syncs/s, sync p99 %.2f ms (in the nodes' handlers %.2f ms, the bench's lateness %.2f ms), commit to watcher on another node p99 %.2f ms (%d; %.2f ms after the answer), %.2f ms with no other load",
			group(s.pacedRate), ms(s.pacedP99), ms(s.pacedHandlerP99), ms(s.pacedWakeP99), ms(w.Quantile(0.99)), w.Count(), ms(watch.fromAnswer.Quantile(0.99)), ms(s.idleWatchP99))
	}
	pb.progress("%s", line)
	return s, &watch, nil
}

// sampleOf is a load's rate, latencies and CPU split per call.
func sampleOf(res *loadResult) pgSample {
	return pgSample{rate: res.rate(), p50: res.hist.Quantile(0.50), p99: res.hist.Quantile(0.99),
		cpu: res.cpu.split(0, float64(res.calls))}
}

// loadListening opens an idle device watch on every node, of users no one
// syncs, and runs the closed-loop load again with devices of its own while
// they are open.
func (pb *pgBench) loadListening(ctx context.Context, clients []*clients, tag string, devices func(string) ([]call, func() bool, error)) (pgSample, error) {
	wctx, cancel := context.WithCancel(ctx)
	var streams []*connect.ServerStreamForClient[dalvv1.WatchEvent]
	defer func() {
		cancel() // ends the streams first, so closing them waits for nothing
		for _, s := range streams {
			_ = s.Close()
		}
	}()
	for i, c := range clients {
		d, err := pb.newDevice(c, fmt.Sprintf("%s-idle%d", tag, i), "phone", pb.cfg.ValueBytes, pb.cfg.Keys)
		if err != nil {
			return pgSample{}, err
		}
		req := connect.NewRequest(&dalvv1.WatchRequest{DeviceId: "tablet"})
		req.Header()["Authorization"] = d.auth
		stream, err := c.device.Watch(wctx, req)
		if err != nil {
			return pgSample{}, fmt.Errorf("idle watch on node %d: %w", i+1, err)
		}
		streams = append(streams, stream)
		// Its first message ends the catch-up: the node listens by then.
		// The next comes at the heartbeat, and is left unread.
		if !stream.Receive() {
			return pgSample{}, fmt.Errorf("idle watch on node %d: %w", i+1, cmp.Or(stream.Err(), io.ErrUnexpectedEOF))
		}
	}
	workers, grown, err := devices(tag + "l")
	if err != nil {
		return pgSample{}, err
	}
	res, err := pb.load(ctx, loadSpec{label: nodeCount(len(clients)) + " listening", unit: "syncs/s", workers: workers, grown: grown})
	if err != nil {
		return pgSample{}, err
	}
	return sampleOf(res), nil
}

// nodesWindow is what each node's metrics say of one measurement.
type nodesWindow []*serverWindow

// nodesDuring returns a nodesWindow whose measuring method is the
// measurement's measuring hook.
func nodesDuring(ctx context.Context, nodes []*proc.Server, clients []*clients) nodesWindow {
	w := make(nodesWindow, len(nodes))
	for i, n := range nodes {
		url, tr := n.URL(), clients[i].tr
		w[i] = &serverWindow{sample: func() (serverSample, bool) {
			fams, err := scrape(ctx, tr, url)
			if err != nil {
				return serverSample{}, false
			}
			return serverSampleOf(fams), true
		}}
	}
	return w
}

// measuring scrapes every node as the measurement starts and once it has
// ended.
func (w nodesWindow) measuring() func() error {
	waits := make([]func() error, len(w))
	for i, sw := range w {
		waits[i] = sw.measuring()
	}
	return func() error {
		for _, wait := range waits {
			_ = wait() // a failed scrape leaves the window without figures
		}
		return nil
	}
}

// syncP99 is the p99 of the time the nodes' Sync handlers took over the
// window, all nodes' syncs together; false when a scrape failed or no
// sync was timed.
func (w nodesWindow) syncP99() (time.Duration, bool) {
	var all histSample
	for _, sw := range w {
		if !sw.ok || !sw.start.hasSyncs || !sw.end.hasSyncs {
			return 0, false
		}
		d, ok := sw.end.syncs.since(sw.start.syncs)
		if !ok {
			return 0, false
		}
		if all, ok = all.plus(d); !ok {
			return 0, false
		}
	}
	q := all.quantile(histSample{}, 0.99)
	if math.IsNaN(q) {
		return 0, false
	}
	return time.Duration(q * float64(time.Second)), true
}
