package bench

import (
	"context"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
)

// catchupData is the catch-up partition, written once and pulled by every
// run: CatchupCommits commits over CatchupKeys keys after version base.
type catchupData struct {
	user       string
	auth       []string
	base, head uint64
	setupRate  float64 // serial commits per second while writing it
}

// catchupScenario times a device's pull of everything it missed.
func (b *bencher) catchupScenario(ctx context.Context, vals map[string]float64) error {
	if b.catchup == nil {
		cd, err := b.writeCatchup(ctx)
		if err != nil {
			return err
		}
		b.catchup = cd
		vals[metricID(Catchup, "setup_rate")] = cd.setupRate
	}
	cd := b.catchup
	req := &dalvv1.SyncRequest{DeviceId: fmt.Sprintf("b%s-catchup-r%d", b.id, b.run), BaseVersion: cd.base}
	pull := func() (time.Duration, *dalvv1.SyncResponse, int64, error) {
		b.clients.pullBody.reset()
		creq := connect.NewRequest(req)
		creq.Header()["Authorization"] = cd.auth
		t0 := time.Now()
		resp, err := b.clients.pull.Sync(ctx, creq)
		d := time.Since(t0)
		if err != nil {
			return 0, nil, 0, fmt.Errorf("%w: pull from version %d: %w", ErrCallFailed, cd.base, err)
		}
		m := resp.Msg
		switch {
		case m.GetStatus() != dalvv1.SyncStatus_SYNC_STATUS_ACCEPTED, m.GetReset_(), m.GetVersion() != cd.head:
			return 0, nil, 0, fmt.Errorf("%w: pull from version %d: status %v, reset %v, version %d (want %d)",
				ErrWrongAnswer, cd.base, m.GetStatus(), m.GetReset_(), m.GetVersion(), cd.head)
		case m.GetMore():
			return 0, nil, 0, fmt.Errorf("%w: pull from version %d was cut (more set) after %d entries", ErrWrongAnswer, cd.base, len(m.GetChanges()))
		case len(m.GetChanges()) != b.cfg.CatchupKeys:
			return 0, nil, 0, fmt.Errorf("%w: pull from version %d has %d entries, want one per key: %d", ErrWrongAnswer, cd.base, len(m.GetChanges()), b.cfg.CatchupKeys)
		}
		return d, m, b.clients.pullBody.reset(), nil
	}
	if _, _, _, err := pull(); err != nil { // warm-up: connection, caches
		return err
	}
	times := make([]time.Duration, 0, b.cfg.CatchupPulls)
	var (
		last *dalvv1.SyncResponse
		body int64
	)
	for range b.cfg.CatchupPulls {
		d, m, n, err := pull()
		if err != nil {
			return err
		}
		times = append(times, d)
		last, body = m, n
	}
	t := median(times, meanOfMiddle)
	b.progress("%-10s %d pulls of %d commits: median %.2f ms, %d entries, %d bytes",
		Catchup, len(times), cd.head-cd.base, ms(t), len(last.GetChanges()), proto.Size(last))
	vals[metricID(Catchup, "time")] = ms(t)
	vals[metricID(Catchup, "entries")] = float64(len(last.GetChanges()))
	vals[metricID(Catchup, "proto_bytes")] = float64(proto.Size(last))
	vals[metricID(Catchup, "http_bytes")] = float64(body)
	vals[metricID(Catchup, "more")] = 0 // pull refuses an answer with more
	return nil
}

// writeCatchup writes the catch-up partition: CatchupCommits backend
// commits of one PUT each, cycling over CatchupKeys keys. One partition's
// commits are serialised by the server, so they go one after another.
func (b *bencher) writeCatchup(ctx context.Context) (*catchupData, error) {
	cd := &catchupData{user: fmt.Sprintf("b%s-catchup", b.id)}
	var err error
	if cd.auth, err = b.deviceAuth(cd.user); err != nil {
		return nil, err
	}
	// The version before the commits: 0 on a new partition.
	pull := connect.NewRequest(&dalvv1.SyncRequest{DeviceId: fmt.Sprintf("b%s-catchup-setup", b.id)})
	pull.Header()["Authorization"] = cd.auth
	resp, err := b.clients.device.Sync(ctx, pull)
	if err != nil {
		return nil, fmt.Errorf("%w: catch-up setup: %w", ErrCallFailed, err)
	}
	cd.base = resp.Msg.GetVersion()

	value := make([]byte, b.cfg.ValueBytes)
	for i := range value {
		value[i] = 'c'
	}
	op := &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Value: &dalvv1.Value{Kind: &dalvv1.Value_Scalar{Scalar: value}}}
	creq := &dalvv1.CommitRequest{User: cd.user, Ops: []*dalvv1.Op{op}}
	keyAuth := authorization(b.key)
	keys := make([]string, b.cfg.CatchupKeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("catchup/key-%04d", i)
	}
	start := time.Now()
	next := start.Add(time.Second)
	version := cd.base
	for i := range b.cfg.CatchupCommits {
		op.Key = keys[i%len(keys)]
		putNumber(value, uint64(i))
		req := connect.NewRequest(creq)
		req.Header()["Authorization"] = keyAuth
		resp, err := b.clients.backend.Commit(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("%w: catch-up setup, commit %d: %w", ErrCallFailed, i+1, err)
		}
		if v := resp.Msg.GetVersion(); v != version+1 {
			return nil, fmt.Errorf("%w: catch-up setup, commit %d made version %d after %d", ErrWrongAnswer, i+1, v, version)
		}
		version++
		if now := time.Now(); now.After(next) {
			next = now.Add(time.Second)
			fmt.Fprintf(b.out, "catch-up setup: %s/%s commits, %s/s, rss %s\n", group(float64(i+1)),
				group(float64(b.cfg.CatchupCommits)), group(float64(i+1)/now.Sub(start).Seconds()), mb(b.mon.current()))
		}
		if err := b.serverErr(); err != nil {
			return nil, err
		}
	}
	cd.head = version
	cd.setupRate = float64(b.cfg.CatchupCommits) / time.Since(start).Seconds()
	fmt.Fprintf(b.out, "catch-up setup: %s commits over %d keys in %.1fs (%s/s, one partition, serial)\n",
		group(float64(b.cfg.CatchupCommits)), len(keys), time.Since(start).Seconds(), group(cd.setupRate))
	return cd, nil
}
