package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
)

// clients are the bench's Connect clients. They share one HTTP transport,
// so the sync scenario and the no-op floor go through the same connection
// pool, protocol and codec.
type clients struct {
	tr      *http.Transport
	device  dalvv1connect.ClientServiceClient
	backend dalvv1connect.BackendServiceClient
	health  *grpchealth.Client
	// pull is a device client whose answers' HTTP bodies are counted.
	pull     dalvv1connect.ClientServiceClient
	pullBody *countingTransport
	// lean, when set, holds the connections of the sync and floor loads,
	// one per call in flight: Config.Client is ClientLean.
	lean *leanPool
}

// newClients builds the HTTP client so that it is not the bottleneck: a
// kept-alive connection per concurrent caller (HTTP/1.1) or one
// multiplexed connection (h2c, or HTTP/2 over TLS), no proxy lookup, the Connect protocol with
// the binary protobuf codec.
func newClients(cfg Config, url string) (*clients, error) {
	tr := &http.Transport{
		Proxy:               nil, // loopback: never ask the environment for a proxy
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        2*cfg.Devices + 16,
		MaxIdleConnsPerHost: 2*cfg.Devices + 16,
		IdleConnTimeout:     time.Minute,
		// Connect negotiates compression itself; the transport must neither
		// ask for gzip nor decompress, so body sizes are what crossed the wire.
		DisableCompression: true,
		Protocols:          new(http.Protocols),
		TLSClientConfig:    cfg.TLS,
	}
	if cfg.H2C {
		tr.Protocols.SetUnencryptedHTTP2(true)
		tr.Protocols.SetHTTP2(true) // to an https:// URL
	} else {
		tr.Protocols.SetHTTP1(true)
	}
	var opts []connect.ClientOption
	if !cfg.Gzip {
		// connect-go clients accept gzip by default, and connect-go servers
		// then compress every answer, however small.
		opts = append(opts, connect.WithAcceptCompression("gzip", nil, nil))
	}
	rt := oneWrite{tr}
	hc := &http.Client{Transport: rt}
	counted := &countingTransport{rt: rt}
	var lean *leanPool
	if cfg.Client == ClientLean {
		var err error
		if lean, err = newLeanPool(url, cfg.TLS); err != nil {
			return nil, err
		}
	}
	return &clients{
		tr:       tr,
		device:   dalvv1connect.NewClientServiceClient(hc, url, opts...),
		backend:  dalvv1connect.NewBackendServiceClient(hc, url, opts...),
		health:   grpchealth.NewClient(hc, url, opts...),
		pull:     dalvv1connect.NewClientServiceClient(&http.Client{Transport: counted}, url, opts...),
		pullBody: counted,
		lean:     lean,
	}, nil
}

func (c *clients) close() {
	c.tr.CloseIdleConnections()
	if c.lean != nil {
		c.lean.close()
	}
}

// healthCheckProcedure is grpc.health.v1.Health's Check, which grpchealth
// serves.
const healthCheckProcedure = "/" + grpchealth.HealthV1ServiceName + "/Check"

// healthCheck returns one caller's health check of the whole server,
// through the lean client's connections or connect-go's client.
func (c *clients) healthCheck() func(context.Context) (grpchealth.Status, error) {
	if c.lean != nil {
		return func(ctx context.Context) (grpchealth.Status, error) {
			conn := c.lean.get()
			defer c.lean.put(conn)
			// The request, an empty service name, is the empty message.
			body, err := conn.unary(ctx, healthCheckProcedure, nil, nil)
			if err != nil {
				return 0, err
			}
			return healthStatus(body)
		}
	}
	req := &grpchealth.CheckRequest{} // only read by Check
	return func(ctx context.Context) (grpchealth.Status, error) {
		resp, err := c.health.Check(ctx, req)
		if err != nil {
			return 0, err
		}
		return resp.Status, nil
	}
}

// healthStatus reads the status, field 1, of an encoded
// grpc.health.v1.HealthCheckResponse; grpchealth keeps its generated types
// internal.
func healthStatus(b []byte) (grpchealth.Status, error) {
	var status grpchealth.Status // proto3: absent is 0, UNKNOWN
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, fmt.Errorf("decode the health check's answer: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if num == 1 && typ == protowire.VarintType {
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return 0, fmt.Errorf("decode the health check's answer: %w", protowire.ParseError(m))
			}
			status, b = grpchealth.Status(v), b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return 0, fmt.Errorf("decode the health check's answer: %w", protowire.ParseError(m))
		}
		b = b[m:]
	}
	return status, nil
}

// authorization is a ready Authorization header value for a bearer token,
// set into requests' headers without canonicalising or copying.
func authorization(token string) []string { return []string{"Bearer " + token} }

// oneWrite hands the transport request bodies it knows are in memory.
// connect-go's request body is its own type, for which net/http flushes the
// headers before writing the body: two writes, two TCP segments and often
// two reads on the server for every call. Copied into a bytes.Reader, a
// small request goes out in one write, as a well-behaved client sends it.
type oneWrite struct{ rt http.RoundTripper }

func (t oneWrite) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body == nil || req.Body == http.NoBody || req.ContentLength <= 0 || req.ContentLength > 64<<10 {
		return t.rt.RoundTrip(req)
	}
	buf := make([]byte, req.ContentLength)
	_, err := io.ReadFull(req.Body, buf)
	if cerr := req.Body.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	r := *req // a RoundTripper must not change the caller's request
	r.Body = io.NopCloser(bytes.NewReader(buf))
	return t.rt.RoundTrip(&r)
}

// countingTransport counts the bytes of the answers' bodies as they come
// off the wire (compressed, if the server compressed them). It is for one
// caller at a time.
type countingTransport struct {
	rt http.RoundTripper
	n  atomic.Int64
}

func (t *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &countingBody{ReadCloser: resp.Body, n: &t.n}
	return resp, nil
}

// reset zeroes the count and returns what it was.
func (t *countingTransport) reset() int64 { return t.n.Swap(0) }

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
