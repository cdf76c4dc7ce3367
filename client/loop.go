package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"connectrpc.com/connect"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
)

// loopState is the background sync loop, when it runs.
type loopState struct {
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// Start runs the sync loop in the background until ctx is done, [Replica.Stop]
// or [Replica.Close]: it syncs at once and soon after every local write,
// keeps a watch open on the user's partition and each shared partition so
// remote changes arrive live, pulls every ResyncEvery as a safety net, and
// while the server is unreachable or unavailable retries with backoff and
// jitter, resuming by itself. Errors go to [Replica.Status].
func (r *Replica) Start(ctx context.Context) error {
	if r.cli == nil {
		return ErrNoServer
	}
	r.loop.mu.Lock()
	defer r.loop.mu.Unlock()
	if r.loop.done != nil {
		select {
		case <-r.loop.done: // ended with its context: start again
		default:
			return ErrRunning
		}
	}
	r.mu.RLock()
	err := r.checkOpen()
	r.mu.RUnlock()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	r.loop.cancel, r.loop.done = cancel, done
	go func() {
		defer close(done)
		r.run(ctx)
	}()
	return nil
}

// Stop stops the sync loop and waits for it to end. Pending writes stay
// pending; Start resumes.
func (r *Replica) Stop() {
	r.loop.mu.Lock()
	cancel, done := r.loop.cancel, r.loop.done
	r.loop.cancel, r.loop.done = nil, nil
	r.loop.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// backoff is exponential with equal jitter: each wait is between half and
// all of min doubled per failure, capped at max.
type backoff struct {
	min, max time.Duration
	mu       sync.Mutex
	n        int
}

func (b *backoff) next() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	d := b.max
	if b.n < 30 && b.min<<b.n < b.max {
		d = b.min << b.n
		b.n++
	}
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(d-half)+1))
}

func (b *backoff) reset() {
	b.mu.Lock()
	b.n = 0
	b.mu.Unlock()
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// errResync ends a watch that met a reset: the loop pulls (which follows a
// reset across pages properly) and watches again from there.
var errResync = errors.New("watch met a reset; pull again")

func (r *Replica) run(ctx context.Context) {
	syncBo := backoff{min: r.opts.RetryMin, max: r.opts.RetryMax}
	watchBo := backoff{min: r.opts.RetryMin, max: r.opts.RetryMax}
	resync := time.NewTimer(r.opts.ResyncEvery)
	defer resync.Stop()
	var w *watchers
	defer func() {
		if w != nil {
			w.stop()
		}
		r.setWatching(false)
	}()
	for {
		shared, err, sharedErr := r.syncAll(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			// The watch goes on if it can: remote changes keep arriving
			// while pushing fails, and a watch that ends says so on errc.
			r.log.Warn("sync failed; retrying with backoff", "err", err)
			r.forgetVerified() // the server may come back with other rules
			if !sleep(ctx, syncBo.next()) {
				return
			}
			continue
		}
		if sharedErr != nil {
			r.log.Warn("shared partitions did not sync", "err", sharedErr)
		}
		syncBo.reset()
		if w == nil {
			w = r.startWatches(ctx, append([]string{""}, shared...), &watchBo)
		}
		resync.Reset(r.opts.ResyncEvery)
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
		case <-resync.C:
		case err := <-w.errc:
			w.stop()
			w = nil
			r.setWatching(false)
			if errors.Is(err, errResync) {
				continue
			}
			r.log.Info("watch ended; resuming", "err", err)
			r.setOnline(false, err)
			r.forgetVerified()
			if !sleep(ctx, watchBo.next()) {
				return
			}
		}
	}
}

// watchers are the watch streams of one loop iteration.
type watchers struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	errc   chan error
}

func (r *Replica) startWatches(ctx context.Context, parts []string, bo *backoff) *watchers {
	ctx, cancel := context.WithCancel(ctx)
	w := &watchers{cancel: cancel, errc: make(chan error, len(parts))}
	for _, part := range parts {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			err := r.watch(ctx, part, bo)
			if ctx.Err() == nil {
				w.errc <- err
			}
		}()
	}
	return w
}

func (w *watchers) stop() {
	w.cancel()
	w.wg.Wait()
}

// watch follows part live until the stream ends: the catch-up first (events
// with more set are gathered and applied at once), then each commit.
// Reaching the live part resets bo.
func (r *Replica) watch(ctx context.Context, part string, bo *backoff) error {
	// The stream lives on after withToken returns: it gets its own context,
	// ended with ctx or by Close.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(r.life, cancel)()
	var stream *connect.ServerStreamForClient[dalvv1.WatchEvent]
	err := r.withToken(ctx, func(_ context.Context, tok string) error {
		r.mu.RLock()
		from := r.versions[part]
		r.mu.RUnlock()
		req := connect.NewRequest(&dalvv1.WatchRequest{DeviceId: r.deviceID, FromVersion: from, Shared: part})
		req.Header().Set("Authorization", "Bearer "+tok)
		s, err := r.cli.Watch(sctx, req)
		if err != nil {
			return err
		}
		// The first event, or the error, says whether the token passed.
		if !s.Receive() {
			err := s.Err()
			s.Close()
			if err == nil {
				err = errStreamEnded
			}
			return err
		}
		stream = s
		return nil
	})
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	defer stream.Close()
	var acc *update
	for {
		ev := stream.Msg()
		r.setOnline(true, nil)
		switch {
		case ev.GetHeartbeat():
			if acc == nil {
				bo.reset()
				if part == "" {
					r.setWatching(true)
				}
			}
		case ev.GetReset_():
			return errResync
		default:
			if acc == nil {
				acc = &update{part: part, changes: make(map[string]*dalvv1.Change)}
			}
			acc.add(ev.GetChanges())
			acc.version = ev.GetVersion()
			if !ev.GetMore() {
				if err := r.applyWatch(ctx, acc); err != nil {
					return err
				}
				acc = nil
			}
		}
		if !stream.Receive() {
			break
		}
	}
	if err := stream.Err(); err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	return fmt.Errorf("watch: %w", errStreamEnded)
}

// applyWatch applies a watch event unless a sync already brought the
// partition past it.
func (r *Replica) applyWatch(ctx context.Context, u *update) error {
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.RLock()
	at := r.versions[u.part]
	r.mu.RUnlock()
	if u.version <= at {
		return nil
	}
	return r.applyRemote(u, nil)
}
