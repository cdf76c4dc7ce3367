package server

import (
	"context"
	"net/http"
	"slices"
	"time"

	"connectrpc.com/connect"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/engine"
	"github.com/dalvdb/dalv/store"
	"github.com/dalvdb/dalv/value"
)

// credential is what a service's requests authenticate with.
type credential int

const (
	deviceToken credential = iota + 1 // a device JWT: dalv.v1.ClientService
	backendKey                        // a backend API key: dalv.v1.BackendService
)

// authenticate checks a request's credential from its headers before
// anything reads its body, and refuses the request, unread, when the
// credential is missing or not accepted (or the user is over the rate
// limit): a client without a credential cannot hold a connection by sending
// a body slowly, or not at all. It is the one place requests are
// authenticated; a device's verified claims ride in the request's context
// for device to return.
func (s *Server) authenticate(cred credential, next http.Handler) http.Handler {
	ew := connect.NewErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		var err error
		switch cred {
		case deviceToken:
			var claims *auth.Claims
			if claims, err = s.verifyDevice(ctx, r.Header); err == nil {
				var st *requestState
				st, r = requestStateOf(r)
				st.claims = claims
			}
		case backendKey:
			err = s.backend(r.Header)
		}
		if err == nil {
			next.ServeHTTP(w, r)
			return
		}
		refuseUnread(w, r)
		err = s.toConnect(r.URL.Path, err)
		if ew.IsSupported(r) {
			_ = ew.Write(w, r, err)
			return
		}
		status := http.StatusUnauthorized
		if connect.CodeOf(err) == connect.CodeResourceExhausted {
			status = http.StatusTooManyRequests
		}
		http.Error(w, err.Error(), status)
	})
}

// refusalDrain is how long a connection refused with its body unread may
// take to deliver the body, after the answer went out, before it is closed:
// a client that sent its whole body gets a clean close rather than a reset
// that could lose the answer; one that sends nothing is let go soon.
const refusalDrain = 500 * time.Millisecond

// refuseUnread prepares the answer to a request refused before its body was
// read. net/http would read the rest of an HTTP/1 body, without end,
// before answering on a connection it keeps: the connection is closed after
// the answer instead, with refusalDrain to read what already came. HTTP/2
// resets the one stream by itself.
func refuseUnread(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor != 1 || r.ContentLength == 0 {
		return
	}
	w.Header().Set("Connection", "close")
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(refusalDrain))
}

// device returns the claims of an authenticated device request, verified
// by authenticate from its headers before its body was read; a request
// that did not pass through authenticate has its headers checked here.
func (s *Server) device(ctx context.Context, h http.Header) (*auth.Claims, error) {
	if st := stateOf(ctx); st != nil && st.claims != nil {
		return st.claims, nil
	}
	return s.verifyDevice(ctx, h)
}

// verifyDevice verifies a device's token and applies the user's rate
// limit.
func (s *Server) verifyDevice(ctx context.Context, h http.Header) (*auth.Claims, error) {
	tok, err := auth.BearerToken(h.Get("Authorization"))
	if err != nil {
		return nil, err
	}
	claims, err := s.cfg.Verifier.Verify(ctx, tok)
	if err != nil {
		return nil, err
	}
	if err := value.ValidatePartitionName(claims.Subject); err != nil {
		return nil, engine.Errorf(errUnauthenticated, "the token's sub claim is not a usable user id: %v", err)
	}
	if s.limiter != nil && !s.limiter.allow(claims.Subject) {
		return nil, engine.Errorf(errRateLimited, "user %q is over the rate limit of %g requests per second (--rate-limit)", claims.Subject, s.cfg.RateLimit)
	}
	return claims, nil
}

// backend authenticates a backend request by API key (authenticate calls
// it for every request of BackendService).
func (s *Server) backend(h http.Header) error {
	key, err := auth.BearerToken(h.Get("Authorization"))
	if err != nil {
		return engine.Errorf(errUnauthenticated, "backend API key: %v", err)
	}
	if !s.cfg.BackendKeys.Check(key) {
		return engine.Errorf(errUnauthenticated, "backend API key not accepted")
	}
	return nil
}

// devicePartition is the partition a device names: its own when shared is
// empty, else a shared partition it may read.
func (s *Server) devicePartition(c *auth.Claims, shared string) (store.Partition, error) {
	if shared == "" {
		return store.Partition{Name: c.Subject}, nil
	}
	sp, ok := s.shared[shared]
	if !ok {
		return store.Partition{}, engine.Errorf(errNotFound, "no shared partition %q", shared)
	}
	if !s.mayRead(c, sp) {
		return store.Partition{}, engine.Errorf(engine.ErrPermission, "shared partition %q is readable only with claim %s=%q in the token", shared, sp.Claim, sp.Value)
	}
	return store.Partition{Shared: true, Name: shared}, nil
}

func (s *Server) mayRead(c *auth.Claims, sp SharedPartition) bool {
	return sp.Claim == "" || c.Has(sp.Claim, sp.Value)
}

// readableShared lists the shared partitions c may read, sorted.
func (s *Server) readableShared(c *auth.Claims) []string {
	var out []string
	for name, sp := range s.shared {
		if s.mayRead(c, sp) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// backendPartition is the partition a backend request names: exactly one of
// user or shared, the latter configured.
func (s *Server) backendPartition(user, shared string) (store.Partition, error) {
	switch {
	case user != "" && shared != "":
		return store.Partition{}, engine.Errorf(engine.ErrInvalid, "set user or shared, not both")
	case user == "" && shared == "":
		return store.Partition{}, engine.Errorf(engine.ErrInvalid, "set user (a user id) or shared (a shared partition name)")
	case shared != "":
		if _, ok := s.shared[shared]; !ok {
			return store.Partition{}, engine.Errorf(errNotFound, "no shared partition %q (configure it with --shared)", shared)
		}
		return store.Partition{Shared: true, Name: shared}, nil
	}
	if err := value.ValidatePartitionName(user); err != nil {
		return store.Partition{}, err
	}
	return store.Partition{Name: user}, nil
}
