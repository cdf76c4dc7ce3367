package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/dalvdb/dalv/value"
)

// Options configures [Open]. The zero value opens a replica that works
// offline only; set ServerURL and TokenSource to sync.
type Options struct {
	// ServerURL is the base URL of a DalvDB server, as in
	// "http://127.0.0.1:7070" or "https://dalv.example.com". Empty: the
	// replica never syncs.
	ServerURL string

	// TokenSource returns a device token (a JWT whose subject is the user).
	// It is called once before the first request, and again whenever the
	// server answers unauthenticated, after which the request is retried
	// once. Required with ServerURL.
	TokenSource func(ctx context.Context) (string, error)

	// Resolver decides conflicting keys; see [Resolver]. Nil defers every
	// conflict to the inbox ([Replica.Conflicts]), so nothing is lost until
	// the application settles it.
	Resolver Resolver

	// HTTPClient carries the requests. Nil means a client of this replica's
	// own, without a timeout (watches are long-lived); RequestTimeout bounds
	// each unary call instead. To an https:// server both speak HTTP/2, one
	// connection carrying the watches and the syncs. For a server whose
	// certificate a private CA signed, pass a client trusting that CA,
	// built from a clone of http.DefaultTransport (a bare Transport with
	// a TLSClientConfig of its own speaks HTTP/1.1 only, unless
	// ForceAttemptHTTP2 is set):
	//
	//	tr := http.DefaultTransport.(*http.Transport).Clone()
	//	tr.TLSClientConfig = &tls.Config{RootCAs: pool} // pool: x509.NewCertPool, AppendCertsFromPEM
	//	opts.HTTPClient = &http.Client{Transport: tr}
	HTTPClient *http.Client

	// Shared names the shared partitions to keep: pulled and watched like
	// the user's own partition, readable through [Replica.Shared].
	Shared []string

	// Logger receives the replica's logs. Nil discards them.
	Logger *slog.Logger

	// RetryMin and RetryMax bound the backoff of the sync loop while the
	// server is unreachable or unavailable: the wait doubles from RetryMin
	// up to RetryMax, with jitter. Defaults 200ms and 30s.
	RetryMin, RetryMax time.Duration

	// RequestTimeout bounds one unary request. Default 30s.
	RequestTimeout time.Duration

	// ResyncEvery is how often the loop pulls even when the watch is quiet,
	// as a safety net. Default 5m.
	ResyncEvery time.Duration

	// MaxConflictRounds bounds the rounds of resolve-and-resend for one
	// batch in one sync; past it the sync reports [ErrConflictRounds].
	// Default 10.
	MaxConflictRounds int

	// MaxLimitRetries is how many times in a row a batch answered
	// resource_exhausted is retried (with backoff) before it is set aside
	// as refused, when it still passes the local limit checks (the server's
	// rate limit answers resource_exhausted too). Default 8.
	MaxLimitRetries int

	// LockTimeout bounds the wait for the file lock in [Open]. Default 100ms.
	LockTimeout time.Duration

	// MaxSubscriberQueue bounds the changes queued for one subscription
	// while its callback runs; past it the queue is replaced by one change
	// with Overflow set (see [Replica.Subscribe]). Default 10000.
	MaxSubscriberQueue int

	// OnRefused, when set, is called (from the syncing goroutine) for each
	// batch the server refused for a reason other than a conflict, after it
	// was set aside durably.
	OnRefused func(RefusedBatch)

	// OnCorrupt, when set, makes [Open] recover from a damaged replica
	// file instead of returning [ErrCorrupt]: the file is set aside next to
	// path (as path.corrupt-TIMESTAMP), a fresh replica starts holding the
	// pending writes, deferred conflicts and refused batches that could be
	// read, under the old device id and batch numbers when those could be
	// read, and syncs the rest from the server. OnCorrupt is then called,
	// before Open returns, with what was done and what was lost; the same
	// is logged.
	OnCorrupt func(CorruptReport)

	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Defaults of [Options].
const (
	DefaultRetryMin           = 200 * time.Millisecond
	DefaultRetryMax           = 30 * time.Second
	DefaultRequestTimeout     = 30 * time.Second
	DefaultResyncEvery        = 5 * time.Minute
	DefaultMaxConflictRounds  = 10
	DefaultMaxLimitRetries    = 8
	DefaultLockTimeout        = 100 * time.Millisecond
	DefaultMaxSubscriberQueue = 10000
)

// withDefaults returns a copy of o with defaults filled in, or an error
// saying what is wrong with o. It never modifies the caller's struct.
func (o Options) withDefaults() (Options, error) {
	o.Shared = slices.Clone(o.Shared)
	if o.ServerURL != "" {
		u, err := url.Parse(o.ServerURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return o, fmt.Errorf("ServerURL %q: want an http:// or https:// URL with a host", o.ServerURL)
		}
		if o.TokenSource == nil {
			return o, errors.New("TokenSource is required with ServerURL")
		}
	}
	seen := make(map[string]bool)
	for _, s := range o.Shared {
		if err := value.ValidatePartitionName(s); err != nil {
			return o, fmt.Errorf("Shared %q: %v", s, err)
		}
		if seen[s] {
			return o, fmt.Errorf("Shared %q is named twice", s)
		}
		seen[s] = true
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"RetryMin", &o.RetryMin, DefaultRetryMin},
		{"RetryMax", &o.RetryMax, DefaultRetryMax},
		{"RequestTimeout", &o.RequestTimeout, DefaultRequestTimeout},
		{"ResyncEvery", &o.ResyncEvery, DefaultResyncEvery},
		{"LockTimeout", &o.LockTimeout, DefaultLockTimeout},
	} {
		switch {
		case *d.v < 0:
			return o, fmt.Errorf("%s %v: must not be negative", d.name, *d.v)
		case *d.v == 0:
			*d.v = d.def
		}
	}
	if o.RetryMax < o.RetryMin {
		return o, fmt.Errorf("RetryMax %v is below RetryMin %v", o.RetryMax, o.RetryMin)
	}
	if o.MaxConflictRounds < 0 || o.MaxLimitRetries < 0 || o.MaxSubscriberQueue < 0 {
		return o, errors.New("MaxConflictRounds, MaxLimitRetries and MaxSubscriberQueue must not be negative")
	}
	if o.MaxSubscriberQueue == 0 {
		o.MaxSubscriberQueue = DefaultMaxSubscriberQueue
	}
	if o.MaxConflictRounds == 0 {
		o.MaxConflictRounds = DefaultMaxConflictRounds
	}
	if o.MaxLimitRetries == 0 {
		o.MaxLimitRetries = DefaultMaxLimitRetries
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o, nil
}
