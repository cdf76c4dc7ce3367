package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
)

// The PostgreSQL bench's watch probes: device pairs of one user, one
// syncing through a node, the other watching through the next one, which
// time each commit from one node to a watcher on another.

// startProbes starts the watch probes, the i-th syncing through
// clients[i] and watching through clients[i+1] (round robin), until ctx
// ends; wait waits for them and returns the first error of one that failed
// before then.
func (pb *pgBench) startProbes(ctx context.Context, clients []*clients, tag string, times *probeTimes) (wait func() error) {
	n := len(clients)
	var wg sync.WaitGroup
	errc := make(chan error, pb.cfg.Probes)
	for i := range pb.cfg.Probes {
		wg.Go(func() {
			if err := pb.probe(ctx, clients[i%n], clients[(i+1)%n], fmt.Sprintf("%s-probe%d", tag, i), times); err != nil && ctx.Err() == nil {
				errc <- err
			}
		})
	}
	return func() error {
		wg.Wait()
		select {
		case err := <-errc:
			return fmt.Errorf("watch probe: %w", err)
		default:
			return nil
		}
	}
}

// probesAlone runs the watch probes, and no other load, for the duration.
func (pb *pgBench) probesAlone(ctx context.Context, clients []*clients, tag string, times *probeTimes) error {
	ctx, cancel := context.WithTimeout(ctx, pb.cfg.Duration)
	defer cancel()
	return pb.startProbes(ctx, clients, tag, times)()
}

// probe syncs user's phone through one node every ProbeEvery while its
// tablet watches through another, and records the time from sending each
// sync to its commit's arrival at the watch.
func (pb *pgBench) probe(ctx context.Context, syncs, watches *clients, user string, times *probeTimes) error {
	phone, err := pb.newDevice(syncs, user, "phone", pb.cfg.ValueBytes, pb.cfg.Keys)
	if err != nil {
		return err
	}
	req := connect.NewRequest(&dalvv1.WatchRequest{DeviceId: "tablet"})
	req.Header()["Authorization"] = phone.auth
	stream, err := watches.device.Watch(ctx, req)
	if err != nil {
		return err
	}
	defer stream.Close()
	type arrival struct {
		version uint64
		at      time.Time
	}
	arrived := make(chan arrival, 64)
	go func() {
		defer close(arrived)
		for stream.Receive() {
			if m := stream.Msg(); !m.GetHeartbeat() && m.GetVersion() > 0 {
				arrived <- arrival{m.GetVersion(), time.Now()}
			}
		}
	}()
	var local probeTimes
	defer times.merge(&local)
	tick := time.NewTicker(pb.cfg.ProbeEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		sent := time.Now()
		if err := phone.sync(ctx); err != nil {
			if ctx.Err() != nil {
				continue
			}
			return err
		}
		answered := time.Now()
		for a := range arrived {
			if a.version >= phone.base {
				local.fromSend.Record(a.at.Sub(sent))
				local.fromAnswer.Record(a.at.Sub(answered)) // 0 when the watcher had it first
				break
			}
		}
	}
}

// probeTimes are the watch probes' timings: from sending each sync to its
// commit's arrival at the watch, and from the sync's answer to that
// arrival (0 when the watch had it first), which leaves the sync's own
// latency out.
type probeTimes struct {
	mu                   sync.Mutex
	fromSend, fromAnswer histogram
}

// merge adds o's timings to t.
func (t *probeTimes) merge(o *probeTimes) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.fromSend.Merge(&o.fromSend)
	t.fromAnswer.Merge(&o.fromAnswer)
}

// WriteTable writes the report for people.
