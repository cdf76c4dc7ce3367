package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
)

// leanConn is one caller's kept-alive HTTP/1.1 connection that speaks
// Connect's unary protocol with the binary protobuf codec, written and read
// by the calling goroutine itself. connect-go's client over net/http's
// Transport hands every call to two goroutines of the connection and back,
// and spends about half as much CPU per sync as the server: on a machine
// the two share, a load generator that heavy measures itself. This one
// writes each request with net/http's Request.Write in one write and reads
// the answer with http.ReadResponse, so that what the server sees on the
// wire is what any Connect client sends.
//
// A leanConn is for one call at a time; a leanPool hands them out. It dials
// on its first call and again after a failed one.
type leanConn struct {
	dial func(ctx context.Context) (net.Conn, error)
	req  *http.Request // reused: its header is the Connect protocol's
	body bytes.Reader  // the request body, over out
	out  []byte
	in   bytes.Buffer // the answer's body
	conn net.Conn
	bw   *bufio.Writer
	br   *bufio.Reader
}

// newLeanPool returns a pool of leanConns to the server at base (http:// or
// https://, TLS configured by tlsc).
func newLeanPool(base string, tlsc *tls.Config) (*leanPool, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("server URL %q: %w", base, err)
	}
	host := u.Host
	if u.Port() == "" {
		switch u.Scheme {
		case "https":
			host = net.JoinHostPort(u.Hostname(), "443")
		default:
			host = net.JoinHostPort(u.Hostname(), "80")
		}
	}
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	dial := func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", host) }
	if u.Scheme == "https" {
		cfg := &tls.Config{}
		if tlsc != nil {
			cfg = tlsc.Clone()
		}
		cfg.NextProtos = []string{"http/1.1"}
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		td := &tls.Dialer{NetDialer: d, Config: cfg}
		dial = func(ctx context.Context) (net.Conn, error) { return td.DialContext(ctx, "tcp", host) }
	}
	return &leanPool{newConn: func() *leanConn {
		h := http.Header{
			"Content-Type":             {"application/proto"},
			"Connect-Protocol-Version": {"1"},
			"User-Agent":               {"dalv-bench"},
		}
		return &leanConn{
			dial: dial,
			req:  &http.Request{Method: http.MethodPost, URL: &url.URL{Scheme: u.Scheme, Host: u.Host}, Host: u.Host, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: h},
		}
	}}, nil
}

// call sends req to the procedure at path ("/package.Service/Method") with
// the Authorization header value auth (none when nil), and decodes the
// answer into resp. A Connect error comes back as a *connect.Error with the
// server's code and message.
func (c *leanConn) call(ctx context.Context, path string, auth []string, req, resp proto.Message) error {
	var err error
	if c.out, err = (proto.MarshalOptions{}).MarshalAppend(c.out[:0], req); err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	body, err := c.unary(ctx, path, auth, c.out)
	if err != nil {
		return err
	}
	if err := proto.Unmarshal(body, resp); err != nil {
		return fmt.Errorf("decode the answer of %s: %w", path, err)
	}
	return nil
}

// unary sends the encoded message msg to the procedure at path and returns
// the encoded answer, valid until the next call.
func (c *leanConn) unary(ctx context.Context, path string, auth []string, msg []byte) ([]byte, error) {
	reused := c.conn != nil
	body, err := c.roundTrip(ctx, path, auth, msg)
	if err != nil && reused && ctx.Err() == nil && closedByServer(err) {
		// The server closed the kept-alive connection while it idled (its
		// idle timeout, or a restart), as any HTTP client finds now and
		// then: the request goes again on a new connection. The bench's
		// calls bear that: a sync is answered, not applied, when its batch
		// was applied before.
		return c.roundTrip(ctx, path, auth, msg)
	}
	return body, err
}

// closedByServer reports whether err is what a write to or a read from a
// connection the peer closed gives.
func closedByServer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// roundTrip is one try of unary, on the open connection or a new one.
func (c *leanConn) roundTrip(ctx context.Context, path string, auth []string, msg []byte) (_ []byte, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if c.conn == nil {
		conn, err := c.dial(ctx)
		if err != nil {
			return nil, fmt.Errorf("dial: %w", err)
		}
		c.conn = conn
		if c.bw == nil {
			c.bw, c.br = bufio.NewWriter(conn), bufio.NewReader(conn)
		} else {
			c.bw.Reset(conn)
			c.br.Reset(conn)
		}
	}
	// A call ends when the server answers; ctx ending cuts it short.
	conn := c.conn
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		if !stop() || err != nil {
			// The deadline is set, or the connection is in an unknown state.
			c.close()
		}
		if err != nil && ctx.Err() != nil {
			err = ctx.Err()
		}
	}()

	c.body.Reset(msg)
	c.req.URL.Path = path
	c.req.Body, c.req.ContentLength = io.NopCloser(&c.body), int64(len(msg))
	if len(msg) == 0 {
		// A body of unknown length would go chunked; no body sends a
		// length of 0.
		c.req.Body = http.NoBody
	}
	if auth != nil {
		c.req.Header["Authorization"] = auth
	} else {
		delete(c.req.Header, "Authorization")
	}
	if err := c.req.Write(c.bw); err != nil {
		return nil, fmt.Errorf("send %s: %w", path, err)
	}
	if err := c.bw.Flush(); err != nil {
		return nil, fmt.Errorf("send %s: %w", path, err)
	}
	r, err := http.ReadResponse(c.br, c.req)
	if err != nil {
		return nil, fmt.Errorf("read the answer of %s: %w", path, err)
	}
	c.in.Reset()
	_, err = c.in.ReadFrom(r.Body)
	if cerr := r.Body.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("read the answer of %s: %w", path, err)
	}
	if r.Close {
		c.close() // the server closes it after this answer
	}
	if r.StatusCode != http.StatusOK {
		return nil, connectError(r, c.in.Bytes())
	}
	return c.in.Bytes(), nil
}

// leanPool keeps the lean connections of calls that are done for the next
// calls, as net/http's Transport keeps its idle connections: the bench
// holds open only as many connections as it has had calls in flight at
// once, whichever devices made them.
type leanPool struct {
	newConn func() *leanConn
	mu      sync.Mutex
	idle    []*leanConn
}

// get returns an idle connection, or a new one.
func (p *leanPool) get() *leanConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		return c
	}
	return p.newConn()
}

// put returns c, its call done, for another call.
func (p *leanPool) put(c *leanConn) {
	p.mu.Lock()
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

// close closes the idle connections.
func (p *leanPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.idle {
		c.close()
	}
	p.idle = nil
}

// close closes the connection, if one is open.
func (c *leanConn) close() {
	if c.conn != nil {
		_ = c.conn.Close()
		c.conn = nil
	}
}

// connectError is the error a Connect unary answer with a status other than
// 200 stands for: its JSON body's code and message; a body that is not a
// Connect error is given whole, with the HTTP status.
func connectError(r *http.Response, body []byte) error {
	var wire struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	var code connect.Code
	if json.Unmarshal(body, &wire) != nil || code.UnmarshalText([]byte(wire.Code)) != nil {
		return connect.NewError(connect.CodeUnknown, fmt.Errorf("HTTP %s: %s", r.Status, bytes.TrimSpace(body)))
	}
	return connect.NewError(code, errors.New(wire.Message))
}
