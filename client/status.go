package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"connectrpc.com/connect"
)

// Status is a snapshot of the replica's sync state.
type Status struct {
	// Pending is the number of local batches not yet acknowledged: each
	// write or [Replica.Update] makes one, and batches written offline may
	// be merged into one before they go up.
	Pending int
	// PendingOps is the number of writes (ops: puts, deletes, list
	// additions and removals) in those batches.
	PendingOps int
	// Version is the partition version of the user's data the replica
	// has synced to.
	Version uint64
	// LastSync is when the last sync completed; zero before the first.
	LastSync time.Time
	// LastError is why the last sync or watch failed, nil once a sync
	// succeeds. It is nil, never a nil pointer inside a non-nil error,
	// when there is none.
	LastError *SyncError
	// Online reports whether the last exchange with the server succeeded:
	// true after an answered request or a watch event, false before the
	// first exchange and after a failed one, whatever the failure (the
	// server unreachable, the token refused, a request refused).
	Online bool
	// Watching reports whether the live watch of the user's partition is
	// open and caught up.
	Watching bool
	// Conflicts is the number of deferred conflicts in the inbox.
	Conflicts int
	// Refused is the number of batches the server refused, set aside.
	Refused int
}

// ErrorKind says what kind of trouble a [SyncError] reports, so that an
// application can choose what to show or do.
type ErrorKind int

// The kinds of [SyncError].
const (
	// ErrorUnavailable: the server could not be reached, did not answer
	// in time, or failed. The sync loop retries by itself.
	ErrorUnavailable ErrorKind = iota + 1
	// ErrorUnauthenticated: the server refused the token (also after
	// asking the [Options.TokenSource] again), or the token source
	// failed. Nothing syncs until the token source gives a token the
	// server accepts.
	ErrorUnauthenticated
	// ErrorWrongUser: the token is for another user than the one whose
	// data the replica holds ([ErrWrongUser]).
	ErrorWrongUser
	// ErrorRefused: the server refused a request or a write (permission,
	// a bad value, a shared partition this token may not read). A refused
	// write is set aside ([Replica.Refused]) and the others go on.
	ErrorRefused
	// ErrorLimited: the server asked the device to slow down (its rate
	// limit) or to send less; the sync loop retries with backoff.
	ErrorLimited
	// ErrorConflict: conflicts were not settled within
	// [Options.MaxConflictRounds]; the next sync tries again.
	ErrorConflict
	// ErrorLocal: the replica itself failed (its file, or it was closed).
	ErrorLocal
)

// String returns the kind's name, as in "unauthenticated".
func (k ErrorKind) String() string {
	switch k {
	case ErrorUnavailable:
		return "unavailable"
	case ErrorUnauthenticated:
		return "unauthenticated"
	case ErrorWrongUser:
		return "wrong user"
	case ErrorRefused:
		return "refused"
	case ErrorLimited:
		return "limited"
	case ErrorConflict:
		return "conflict"
	case ErrorLocal:
		return "local"
	}
	return fmt.Sprintf("ErrorKind(%d)", int(k))
}

// SyncError is why a sync or watch failed, as [Status].LastError and
// [Replica.WaitSynced] report it: a kind to branch on and a message for
// people. The underlying error stays available to [errors.Is] and
// [errors.As] (a *connect.Error for the server's answers, [ErrWrongUser],
// a [RefusedBatch], ...).
type SyncError struct {
	// Kind is what kind of trouble it is.
	Kind ErrorKind
	// Message says what happened in words for the application's user,
	// as in "the server refused the token: token signature invalid".
	Message string
	// At is when it happened.
	At time.Time
	// Err is the underlying error.
	Err error
}

// Error returns the message.
func (e *SyncError) Error() string {
	if e == nil {
		return "<nil>"
	}
	return e.Message
}

// Unwrap returns the underlying error.
func (e *SyncError) Unwrap() error {
	if e == nil {
		return nil
	}
	return e.Err
}

// ends reports whether [Replica.WaitSynced] gives up on e: the loop keeps
// retrying, but nothing will sync until something outside the replica
// changes (the token, the replica file).
func (e *SyncError) ends() bool {
	switch e.Kind {
	case ErrorUnauthenticated, ErrorWrongUser, ErrorLocal:
		return true
	}
	return false
}

// errStreamEnded ends a watch that the server closed.
var errStreamEnded = errors.New("the server ended the live connection")

// tokenSourceError is a failure of the [Options.TokenSource].
type tokenSourceError struct{ err error }

func (e *tokenSourceError) Error() string { return "token source: " + e.err.Error() }
func (e *tokenSourceError) Unwrap() error { return e.err }

// wrongUserError refuses a token for another user than the replica's.
type wrongUserError struct{ token, replica, path string }

func (e *wrongUserError) Error() string {
	return fmt.Sprintf("%v: the token is for user %q, but replica %s holds the data of user %q", ErrWrongUser, e.token, e.path, e.replica)
}

func (e *wrongUserError) Unwrap() error { return ErrWrongUser }

// syncError describes err for people, or returns nil for nil.
func (r *Replica) syncError(err error) *SyncError {
	if err == nil {
		return nil
	}
	e := &SyncError{Err: err, At: r.opts.Now()}
	var (
		wu *wrongUserError
		ts *tokenSourceError
		rb RefusedBatch
		ce *connect.Error
	)
	switch {
	case errors.As(err, &wu):
		e.Kind, e.Message = ErrorWrongUser, fmt.Sprintf("the token is for user %q, but this replica holds the data of user %q", wu.token, wu.replica)
	case errors.As(err, &ts):
		e.Kind, e.Message = ErrorUnauthenticated, "could not get a token: "+ts.err.Error()
	case errors.As(err, &rb):
		e.Kind, e.Message = ErrorRefused, "the server refused a change: "+rb.Message
	case errors.Is(err, ErrConflictRounds):
		e.Kind, e.Message = ErrorConflict, "conflicting writes were not settled within the allowed rounds; the next sync tries again"
	case errors.Is(err, ErrNotShared):
		e.Kind, e.Message = ErrorRefused, oneLine(err)
	case errors.Is(err, errStreamEnded):
		e.Kind, e.Message = ErrorUnavailable, errStreamEnded.Error()
	case errors.As(err, &ce):
		e.Kind, e.Message = r.describeAnswer(ce)
	case errors.Is(err, context.DeadlineExceeded):
		e.Kind, e.Message = ErrorUnavailable, "the server did not answer in time"
	default:
		e.Kind, e.Message = ErrorLocal, oneLine(err)
	}
	return e
}

// describeAnswer describes a failed request.
func (r *Replica) describeAnswer(ce *connect.Error) (ErrorKind, string) {
	msg := ce.Message()
	var ne net.Error
	switch ce.Code() {
	case connect.CodeUnauthenticated:
		return ErrorUnauthenticated, "the server refused the token: " + msg
	case connect.CodeResourceExhausted:
		return ErrorLimited, "the server asked this device to slow down: " + msg
	case connect.CodePermissionDenied, connect.CodeInvalidArgument, connect.CodeFailedPrecondition,
		connect.CodeNotFound, connect.CodeAlreadyExists, connect.CodeOutOfRange:
		return ErrorRefused, "the server refused the request: " + msg
	case connect.CodeDeadlineExceeded:
		return ErrorUnavailable, "the server did not answer in time"
	case connect.CodeUnimplemented:
		return ErrorUnavailable, fmt.Sprintf("%s does not answer as a DalvDB server: %s", r.opts.ServerURL, msg)
	}
	if errors.As(ce, &ne) {
		// No answer at all: the innermost cause ("connection refused")
		// says the most in the fewest words.
		cause := error(ne)
		for u := errors.Unwrap(cause); u != nil; u = errors.Unwrap(cause) {
			cause = u
		}
		return ErrorUnavailable, fmt.Sprintf("cannot reach the server at %s (%v)", r.opts.ServerURL, cause)
	}
	if ce.Code() == connect.CodeUnavailable {
		return ErrorUnavailable, "the server is unavailable: " + msg
	}
	return ErrorUnavailable, "the server failed: " + msg
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

// interrupted reports whether err only says that the caller (or Close)
// ended the exchange, which tells nothing of the server.
func interrupted(err error) bool {
	return errors.Is(err, context.Canceled) || connect.CodeOf(err) == connect.CodeCanceled
}

// syncRecord is what [Replica.WaitSynced] waits on: the syncs begun, and
// how the last ones ended.
type syncRecord struct {
	begun   uint64        // syncs begun, numbered from 1
	ok      uint64        // the number of the last sync that succeeded
	failed  uint64        // the number of the last sync that failed
	failErr *SyncError    // why it failed
	ended   chan struct{} // closed when a sync ends, then made anew
}

// Status returns the replica's sync state.
func (r *Replica) Status() Status {
	r.mu.RLock()
	pending, version, inbox, refused := len(r.queue), r.versions[""], r.inboxN, r.refusedN
	ops := 0
	for _, b := range r.queue {
		ops += len(b.ops)
	}
	r.mu.RUnlock()
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	s := r.status
	s.Pending, s.PendingOps, s.Version, s.Conflicts, s.Refused = pending, ops, version, inbox, refused
	return s
}

// WaitSynced returns nil once every write made before the call has been
// answered by the server (applied, set aside as refused, or deferred to the
// inbox by the resolver) and the replica has pulled what the server holds:
// that is, once a sync that began after the call succeeded.
//
// With the loop running ([Replica.Start]) it asks the loop to sync at once
// and waits, through failures the loop retries by itself (the server
// unreachable, rate limits), until ctx ends; it returns early with the
// [SyncError] of a failure that retrying alone cannot cure: a token the
// server refuses ([ErrorUnauthenticated]), a token for another user
// ([ErrorWrongUser]), or a replica that failed or was closed
// ([ErrorLocal]). Without the loop it syncs once itself and returns that
// sync's error as a [SyncError].
func (r *Replica) WaitSynced(ctx context.Context) error {
	if r.cli == nil {
		return ErrNoServer
	}
	r.statusMu.Lock()
	after := r.syncs.begun
	r.statusMu.Unlock()
	for {
		r.loop.mu.Lock()
		loopDone := r.loop.done
		r.loop.mu.Unlock()
		if loopDone == nil || isClosed(loopDone) {
			err := r.Sync(ctx)
			if err == nil || ctx.Err() != nil {
				return err
			}
			return r.syncError(err)
		}
		r.kickLoop()
		r.statusMu.Lock()
		rec := r.syncs
		if rec.ended == nil {
			r.syncs.ended = make(chan struct{})
			rec.ended = r.syncs.ended
		}
		r.statusMu.Unlock()
		if rec.ok > after {
			return nil
		}
		if rec.failed > after && rec.failErr.ends() {
			return rec.failErr
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-rec.ended:
		case <-loopDone:
		}
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// beginSync numbers a sync that begins; syncMu must be held.
func (r *Replica) beginSync() uint64 {
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	r.syncs.begun++
	return r.syncs.begun
}

// syncDone records how sync n ended: err about the user's partition,
// sharedErr about the shared ones.
func (r *Replica) syncDone(n uint64, err, sharedErr error) {
	err = errors.Join(err, sharedErr)
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	switch {
	case err == nil:
		r.status.LastError = nil
		r.status.LastSync = r.opts.Now()
		r.syncs.ok = n
	case interrupted(err):
		// Ended by the caller or by Close: it says nothing of the server.
	default:
		se := r.syncError(err)
		r.status.LastError = se
		r.syncs.failed, r.syncs.failErr = n, se
	}
	if r.syncs.ended != nil {
		close(r.syncs.ended)
		r.syncs.ended = nil
	}
}

// setOnline records the outcome of an exchange with the server; err, when
// set, is kept as the last error.
func (r *Replica) setOnline(online bool, err error) {
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	r.status.Online = online
	if err != nil {
		r.status.LastError = r.syncError(err)
	}
}

// setRefused keeps a batch the server refused as the last error.
func (r *Replica) setRefused(rb RefusedBatch) {
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	r.status.LastError = r.syncError(rb)
}

func (r *Replica) setWatching(w bool) {
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	r.status.Watching = w
}

// noteReachable records the outcome of one request: online only when it
// succeeded. A request the caller (or Close) ended says nothing.
func (r *Replica) noteReachable(err error) {
	if err != nil && interrupted(err) {
		return
	}
	r.setOnline(err == nil, nil)
}
