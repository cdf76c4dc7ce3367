package server

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/dalvdb/dalv/store"
)

// A process hears of other processes' commits only while it has a device
// watch or a feed reader to wake. Listening is not free: every commit
// announcement of any process wakes the listening connection in the
// database and this process, and a process that serves only syncs and
// reads would pay for each with nothing to do.
const (
	// listenLinger is how long a process goes on listening after its last
	// watch or feed reader went, so that streams that come and go do not
	// open a connection each.
	listenLinger = 30 * time.Second
	// listenWait bounds how long a new watch or feed reader waits for the
	// listener to start. Past it, it goes on, and finds any commit it was
	// not told of at its next heartbeat, as after a lost notification.
	listenWait = 5 * time.Second
)

// remoteCommits keeps one listener for other processes' commits running
// while any stream holds it, and publishes what it hears to the hub.
type remoteCommits struct {
	n       store.Notifier
	publish func(store.Announcement)
	log     *slog.Logger
	linger  time.Duration
	wait    time.Duration

	mu      sync.Mutex
	holders int
	session *listenSession // nil when not listening
	idle    *time.Timer    // ends the session when it has had no holders for linger
}

// listenSession is one run of the store's Notifications.
type listenSession struct {
	cancel context.CancelFunc
	ready  chan struct{} // closed when the store first listens
	done   chan struct{} // closed when Notifications has returned
}

func newRemoteCommits(n store.Notifier, log *slog.Logger, publish func(store.Announcement)) *remoteCommits {
	return &remoteCommits{n: n, publish: publish, log: log, linger: listenLinger, wait: listenWait}
}

// hold starts the listener unless it runs, and returns once it listens
// (or after r.wait, or when ctx ends): a read of the store begun after hold
// returns misses no commit that the hub is not then told of. release lets
// the listener stop once no one holds it for r.linger.
func (r *remoteCommits) hold(ctx context.Context) (release func()) {
	r.mu.Lock()
	r.holders++
	if r.idle != nil {
		r.idle.Stop()
		r.idle = nil
	}
	if r.session == nil {
		r.session = r.start()
	}
	sess := r.session
	r.mu.Unlock()

	wctx, cancel := context.WithTimeout(ctx, r.wait)
	defer cancel()
	select {
	case <-sess.ready:
	case <-sess.done:
	case <-wctx.Done():
		if ctx.Err() == nil {
			r.log.Warn("not listening for other nodes' commits yet; going on, so this stream hears of them at its heartbeats until the listener starts", "waited", r.wait)
		}
	}
	var once sync.Once
	return func() { once.Do(r.release) }
}

func (r *remoteCommits) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.holders--
	if r.holders > 0 || r.session == nil {
		return
	}
	sess := r.session
	r.idle = time.AfterFunc(r.linger, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		// A hold since, or a stop, may have come first.
		if r.holders == 0 && r.session == sess {
			sess.cancel()
			r.session, r.idle = nil, nil
		}
	})
}

// start runs the store's Notifications in a session of its own; called
// with r.mu held.
func (r *remoteCommits) start() *listenSession {
	ctx, cancel := context.WithCancel(context.Background())
	sess := &listenSession{cancel: cancel, ready: make(chan struct{}), done: make(chan struct{})}
	var once sync.Once
	go func() {
		defer close(sess.done)
		err := r.n.Notifications(ctx, r.publish, func() { once.Do(func() { close(sess.ready) }) })
		if err != nil && ctx.Err() == nil {
			r.log.Error("listening for other nodes' commits stopped", "err", err)
		}
		r.mu.Lock()
		if r.session == sess { // it ended by itself: the next hold starts another
			r.session = nil
		}
		r.mu.Unlock()
	}()
	return sess
}

// listening reports whether a session runs.
func (r *remoteCommits) listening() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.session != nil
}

// stop ends the session, if one runs, and waits for it.
func (r *remoteCommits) stop() {
	r.mu.Lock()
	sess := r.session
	r.session = nil
	if r.idle != nil {
		r.idle.Stop()
		r.idle = nil
	}
	r.mu.Unlock()
	if sess != nil {
		sess.cancel()
		<-sess.done
	}
}
