package server

import (
	"compress/gzip"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/time/rate"
)

// limitRequestSize refuses a request whose declared body is over the limit
// before anything reads it, with a message naming the limit. A body of
// unknown length (chunked, or an HTTP/2 stream) fails with the same message
// once reading it passes the limit.
func (s *Server) limitRequestSize(next http.Handler) http.Handler {
	ew := connect.NewErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > int64(s.cfg.MaxRequestBytes) {
			err := connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
				"request body is %d bytes, over the request limit of %d bytes (--max-request-bytes)", r.ContentLength, s.cfg.MaxRequestBytes))
			if ew.IsSupported(r) {
				_ = ew.Write(w, r, err)
			} else {
				http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			}
			s.metrics.requests.WithLabelValues(r.URL.Path, connect.CodeResourceExhausted.String()).Inc()
			return
		}
		if r.ContentLength < 0 && r.Body != nil {
			r.Body = &limitedBody{ReadCloser: r.Body, max: int64(s.cfg.MaxRequestBytes)}
		}
		next.ServeHTTP(w, r)
	})
}

// limitBodyTime gives a request's body BodyTimeout from its headers to
// arrive whole: a read past it fails with deadline_exceeded, and the
// connection is closed after the answer. The deadline ends with the body:
// net/http lifts an HTTP/1 connection's read deadline when, at the body's
// end, it starts watching for the client hanging up, and an HTTP/2 stream's
// only concerns its body. So the handler's work and a stream's messages
// are not bounded by it.
func (s *Server) limitBodyTime(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			if http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.cfg.BodyTimeout)) == nil {
				// r is withRequestState's copy: the one net/http passed
				// keeps its body.
				r.Body = &timedBody{ReadCloser: r.Body, timeout: s.cfg.BodyTimeout}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// timedBody turns a read past the body's deadline into a Connect error
// naming the flag.
type timedBody struct {
	io.ReadCloser
	timeout time.Duration
}

func (b *timedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = connect.NewError(connect.CodeDeadlineExceeded, fmt.Errorf(
			"request body not received within %v of its headers (--body-timeout)", b.timeout))
	}
	return n, err
}

// limitedBody fails the read that takes a body past max bytes with a Connect
// error naming the limit; Connect hands read errors of its own type to the
// client as they are.
type limitedBody struct {
	io.ReadCloser
	max, read int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.read += int64(n)
	if b.read > b.max {
		return n, errRequestTooLarge(b.max, "")
	}
	return n, err
}

func errRequestTooLarge(limit int64, how string) error {
	return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
		"request body is over the request limit of %d bytes%s (--max-request-bytes)", limit, how))
}

// gzipWithLimit is Connect's gzip, with a request limit message naming the
// flag when a compressed request decompresses past it.
func (s *Server) gzipWithLimit() connect.HandlerOption {
	limit := int64(s.cfg.MaxRequestBytes)
	return connect.WithCompression("gzip",
		func() connect.Decompressor { return &limitedGzip{max: limit} },
		func() connect.Compressor { return gzip.NewWriter(io.Discard) },
	)
}

// limitedGzip is a gzip reader that fails the read that takes the
// decompressed message past max bytes, as limitedBody does.
type limitedGzip struct {
	gzip.Reader
	max, read int64
}

func (d *limitedGzip) Reset(r io.Reader) error {
	d.read = 0
	return d.Reader.Reset(r)
}

func (d *limitedGzip) Read(p []byte) (int, error) {
	n, err := d.Reader.Read(p)
	d.read += int64(n)
	if d.read > d.max {
		return n, errRequestTooLarge(d.max, " once decompressed")
	}
	return n, err
}

// rateLimiter is a token bucket per user, sharded to keep the hot path off
// one lock. Buckets idle for a while are dropped so memory stays bounded by
// the number of recently active users.
type rateLimiter struct {
	rate   rate.Limit
	burst  int
	seed   maphash.Seed
	shards [64]limiterShard
	sweeps atomic.Int64 // unix nanos of the last sweep
	now    func() time.Time
}

type limiterShard struct {
	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	lim  *rate.Limiter
	last time.Time
}

const limiterIdle = time.Minute

// newRateLimiter returns a limiter of perSecond requests per user with the
// given burst, reading the time from now (the server's clock).
func newRateLimiter(perSecond float64, burst int, now func() time.Time) *rateLimiter {
	rl := &rateLimiter{rate: rate.Limit(perSecond), burst: burst, seed: maphash.MakeSeed(), now: now}
	for i := range rl.shards {
		rl.shards[i].buckets = make(map[string]*bucket)
	}
	rl.sweeps.Store(now().UnixNano())
	return rl
}

func (rl *rateLimiter) allow(user string) bool {
	now := rl.now()
	sh := &rl.shards[maphash.String(rl.seed, user)%uint64(len(rl.shards))]
	sh.mu.Lock()
	b := sh.buckets[user]
	if b == nil {
		b = &bucket{lim: rate.NewLimiter(rl.rate, rl.burst)}
		sh.buckets[user] = b
	}
	b.last = now
	ok := b.lim.AllowN(now, 1)
	sh.mu.Unlock()
	if last := rl.sweeps.Load(); now.UnixNano()-last > int64(limiterIdle) && rl.sweeps.CompareAndSwap(last, now.UnixNano()) {
		rl.sweep(now)
	}
	return ok
}

func (rl *rateLimiter) sweep(now time.Time) {
	for i := range rl.shards {
		sh := &rl.shards[i]
		sh.mu.Lock()
		for user, b := range sh.buckets {
			if now.Sub(b.last) > limiterIdle {
				delete(sh.buckets, user)
			}
		}
		sh.mu.Unlock()
	}
}
