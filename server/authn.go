package server

import (
	"context"
	"net/http"
	"slices"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/engine"
	"github.com/dalvdb/dalv/store"
)

// device authenticates a device request and applies the user's rate limit.
func (s *Server) device(ctx context.Context, h http.Header) (*auth.Claims, error) {
	tok, err := auth.BearerToken(h.Get("Authorization"))
	if err != nil {
		return nil, err
	}
	claims, err := s.cfg.Verifier.Verify(ctx, tok)
	if err != nil {
		return nil, err
	}
	if err := engine.ValidatePartitionName(claims.Subject); err != nil {
		return nil, engine.Errorf(errUnauthenticated, "the token's sub claim is not a usable user id: %v", err)
	}
	if s.limiter != nil && !s.limiter.allow(claims.Subject) {
		return nil, engine.Errorf(errRateLimited, "user %q is over the rate limit of %g requests per second (--rate-limit)", claims.Subject, s.cfg.RateLimit)
	}
	return claims, nil
}

// backend authenticates a backend request by API key.
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
	if err := engine.ValidatePartitionName(user); err != nil {
		return store.Partition{}, err
	}
	return store.Partition{Name: user}, nil
}
