package auth

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/MicahParks/jwkset"
)

// jwksSource is the cached key set of one JWKS URL. Verification reads the
// current snapshot without locking; a background loop replaces it when the
// response's max-age runs out, and tokens naming unknown kids cause a
// rate-limited fetch. A failed or empty fetch keeps the keys it has, so a
// provider's outage does not lock every user out.
type jwksSource struct {
	url  string
	opts PublicKeyOptions
	keys atomic.Pointer[keySet]
	// next is when the background loop fetches again, from the last
	// response's max-age.
	next atomic.Int64 // unix nanoseconds

	mu          sync.Mutex
	lastUnknown time.Time     // last fetch caused by an unknown kid
	inflight    chan struct{} // closed when the fetch under way ends
	ctx         context.Context
}

func newJWKSSource(ctx context.Context, raw string, opts PublicKeyOptions) (*jwksSource, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("JWKS URL %q is not an http(s) URL", raw)
	}
	s := &jwksSource{url: raw, opts: opts, ctx: ctx}
	s.keys.Store(newKeySet(nil))
	s.next.Store(time.Now().Add(opts.JWKSMinRefresh).UnixNano())
	return s, nil
}

// start runs the background refresh until ctx ends.
func (s *jwksSource) start(ctx context.Context) {
	go func() {
		timer := time.NewTimer(time.Until(time.Unix(0, s.next.Load())))
		defer timer.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
			if err := s.fetch(ctx); err != nil {
				s.opts.Logger.Warn("JWKS refresh failed; keeping the keys it had", "url", s.url, "err", err, "retry_in", s.opts.JWKSMinRefresh)
			}
			timer.Reset(time.Until(time.Unix(0, s.next.Load())))
		}
	}()
}

// refetchUnknown fetches the set again for a token whose kid it lacks,
// unless one such fetch happened less than UnknownKIDInterval ago. Callers
// arriving while that fetch is under way wait for it (or for ctx).
func (s *jwksSource) refetchUnknown(ctx context.Context) {
	s.mu.Lock()
	if ch := s.inflight; ch != nil {
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		return
	}
	if !s.lastUnknown.IsZero() && time.Since(s.lastUnknown) < s.opts.UnknownKIDInterval {
		s.mu.Unlock()
		return
	}
	s.lastUnknown = time.Now()
	ch := make(chan struct{})
	s.inflight = ch
	s.mu.Unlock()

	// The fetch serves every waiter, so it runs on the source's context,
	// not the request's.
	if err := s.fetch(s.ctx); err != nil {
		s.opts.Logger.Warn("JWKS fetch for an unknown kid failed", "url", s.url, "err", err)
	}
	s.mu.Lock()
	s.inflight = nil
	close(ch)
	s.mu.Unlock()
}

// fetch reads the JWKS and, when it holds usable keys, makes them current.
func (s *jwksSource) fetch(ctx context.Context) error {
	s.next.Store(time.Now().Add(s.opts.JWKSMinRefresh).UnixNano()) // until it succeeds
	ctx, cancel := context.WithTimeout(ctx, s.opts.JWKSTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return fmt.Errorf("JWKS %s: %w", s.url, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.opts.Client.Do(req)
	if err != nil {
		return fmt.Errorf("JWKS %s: %w", s.url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("JWKS %s: HTTP status %s", s.url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxJWKSBytes+1))
	if err != nil {
		return fmt.Errorf("JWKS %s: %w", s.url, err)
	}
	if len(body) > MaxJWKSBytes {
		return fmt.Errorf("JWKS %s: larger than %d bytes", s.url, MaxJWKSBytes)
	}
	keys, skipped, err := parseJWKS(body, s.url)
	for _, why := range skipped {
		s.opts.Logger.Warn("JWKS key skipped", "url", s.url, "why", why)
	}
	if err != nil {
		return err
	}
	s.keys.Store(newKeySet(keys))
	s.next.Store(time.Now().Add(s.refreshAfter(resp.Header)).UnixNano())
	return nil
}

// refreshAfter is how long a response may be kept: its Cache-Control
// max-age within the configured bounds, or the default interval.
func (s *jwksSource) refreshAfter(h http.Header) time.Duration {
	for _, d := range strings.Split(h.Get("Cache-Control"), ",") {
		name, val, _ := strings.Cut(strings.TrimSpace(d), "=")
		if !strings.EqualFold(name, "max-age") {
			continue
		}
		secs, err := strconv.ParseInt(strings.Trim(val, `"`), 10, 64)
		if err != nil || secs < 0 {
			break
		}
		return min(max(time.Duration(min(secs, 1<<32))*time.Second, s.opts.JWKSMinRefresh), s.opts.JWKSMaxRefresh)
	}
	return s.opts.JWKSRefresh
}

// parseJWKS reads a JWKS document. Keys that cannot verify signatures here
// (encryption keys, unsupported or weak ones, invalid parameters) are
// skipped with a reason; a document with no usable key is an error.
func parseJWKS(body []byte, source string) ([]*publicKey, []string, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, nil, fmt.Errorf("JWKS %s is not a JSON key set: %w", source, err)
	}
	var (
		keys    []*publicKey
		skipped []string
	)
	for i, raw := range doc.Keys {
		k, err := parseJWK(raw, source)
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d: %v", i+1, err))
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		why := "it has none"
		if len(skipped) > 0 {
			why = strings.Join(skipped, "; ")
		}
		return nil, skipped, fmt.Errorf("JWKS %s has no usable signing key: %s", source, why)
	}
	return keys, skipped, nil
}

func parseJWK(raw json.RawMessage, source string) (*publicKey, error) {
	var m jwkset.JWKMarshal
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("not a JWK: %w", err)
	}
	switch m.USE {
	case "", jwkset.UseSig:
	default:
		return nil, fmt.Errorf("kid %s has use %q, not sig", quote(m.KID), m.USE)
	}
	if m.ALG != "" && !isPublicKeyAlg(string(m.ALG)) {
		return nil, fmt.Errorf("kid %s has alg %q, not one of %s", quote(m.KID), m.ALG, strings.Join(PublicKeyAlgs, ", "))
	}
	if m.KID != "" {
		if err := checkKID(m.KID); err != nil {
			return nil, err
		}
	}
	// Never fetch what a JWK points to; x5c, if present, is checked against
	// the key by jwkset.
	m.X5U = ""
	// Private parameters are dropped: a provider that publishes its private
	// key has a problem, but its public half is still the key.
	m.D, m.P, m.Q, m.DP, m.DQ, m.QI, m.OTH = "", "", "", "", "", "", nil
	jwk, err := jwkset.NewJWKFromMarshal(m, jwkset.JWKMarshalOptions{}, jwkset.JWKValidateOptions{})
	if err != nil {
		return nil, fmt.Errorf("kid %s: %w", quote(m.KID), err)
	}
	key := jwk.Key()
	if err := usableKey(key); err != nil {
		return nil, fmt.Errorf("kid %s: %w", quote(m.KID), err)
	}
	k := &publicKey{kid: m.KID, alg: string(m.ALG), key: key, source: source}
	if k.alg != "" && !keyFitsAlg(key, k.alg) {
		return nil, fmt.Errorf("kid %s: alg %s does not fit its %s key", quote(m.KID), k.alg, keyKind(key))
	}
	return k, nil
}

func isPublicKeyAlg(alg string) bool {
	for _, a := range PublicKeyAlgs {
		if a == alg {
			return true
		}
	}
	return false
}
