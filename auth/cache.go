package auth

import (
	"context"
	"hash/maphash"
	"sync"
	"time"
)

// cached is a Verifier that remembers tokens it verified until they expire,
// so a device's every request does not pay for parsing and checking the
// same token again. Only successes are remembered; a token is served from
// the cache only while now is before its expiry.
type cached struct {
	v      Verifier
	now    func() time.Time
	seed   maphash.Seed
	perMap int
	shards [16]cacheShard
}

type cacheShard struct {
	mu sync.Mutex
	m  map[string]*Claims
}

// Cached wraps v with a cache of up to about size verified tokens (default
// 4096 when size <= 0). now is the clock (nil: time.Now). Claims handed out
// are shared: callers must not modify them.
func Cached(v Verifier, size int, now func() time.Time) Verifier {
	if size <= 0 {
		size = 4096
	}
	if now == nil {
		now = time.Now
	}
	c := &cached{v: v, now: now, seed: maphash.MakeSeed()}
	c.perMap = max(1, size/len(c.shards))
	for i := range c.shards {
		c.shards[i].m = make(map[string]*Claims)
	}
	return c
}

// Verify implements Verifier.
func (c *cached) Verify(ctx context.Context, token string) (*Claims, error) {
	// The shard comes from the token's last bytes (its signature's), so
	// only the map hashes the whole token: a public-key token is several
	// times longer than an HS256 one, and a lookup should cost about the
	// same for both.
	tail := token[max(0, len(token)-16):]
	sh := &c.shards[maphash.String(c.seed, tail)%uint64(len(c.shards))]
	sh.mu.Lock()
	cl, ok := sh.m[token]
	sh.mu.Unlock()
	if ok && c.now().Before(cl.ExpiresAt) {
		return cl, nil
	}
	cl, err := c.v.Verify(ctx, token)
	if err != nil {
		return nil, err
	}
	sh.mu.Lock()
	if len(sh.m) >= c.perMap {
		// Full: drop an arbitrary entry (map order is random), so the cache
		// stays bounded without bookkeeping on the hot path.
		for k := range sh.m {
			delete(sh.m, k)
			break
		}
	}
	sh.m[token] = cl
	sh.mu.Unlock()
	return cl, nil
}
