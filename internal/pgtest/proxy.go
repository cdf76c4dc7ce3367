package pgtest

import (
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy is a TCP proxy in front of a PostgreSQL server that can delay the
// bytes crossing it, as a slow or stalled network does, or cut its
// connections ([Proxy.SetDown]): each chunk read
// from either side is written to the other once the delay in force when it
// was read has passed, in order. Tests give a node the proxy's URL, then
// delay its connections with [Proxy.SetDelay].
type Proxy struct {
	ln     net.Listener
	target string

	delay atomic.Int64 // nanoseconds

	mu    sync.Mutex
	down  bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewProxy starts a proxy to the server of the postgres:// URL u on a free
// loopback port, stopped when t ends, and returns it with u rewritten to go
// through it.
func NewProxy(t testing.TB, u string) (*Proxy, string) {
	t.Helper()
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatalf("proxy: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy: %v", err)
	}
	p := &Proxy{ln: ln, target: pu.Host, conns: make(map[net.Conn]struct{})}
	if pu.Port() == "" {
		p.target = net.JoinHostPort(pu.Hostname(), "5432")
	}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	pu.Host = ln.Addr().String()
	return p, pu.String()
}

// SetDelay delays the bytes read from now on by d (0: none).
func (p *Proxy) SetDelay(d time.Duration) { p.delay.Store(int64(d)) }

// SetDown cuts every connection through the proxy and refuses new ones
// while down is true, as a network partition does: the bytes in flight are
// lost, each side learns of it only when it next reads or writes, and
// nothing (a cancel request included) gets through. SetDown(false) serves
// new connections again. It returns how many connections it cut.
func (p *Proxy) SetDown(down bool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if !down {
		return 0
	}
	for c := range p.conns {
		c.Close()
	}
	return len(p.conns) / 2
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() { p.serve(c) })
	}
}

// serve forwards one connection both ways until either side ends it.
func (p *Proxy) serve(client net.Conn) {
	p.mu.Lock()
	down := p.down
	p.mu.Unlock()
	if down {
		client.Close()
		return
	}
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		client.Close()
		return
	}
	if !p.track(client, server) {
		return
	}
	defer p.untrack(client, server)
	ended := make(chan struct{}, 2)
	go func() { p.pipe(server, client); ended <- struct{}{} }()
	go func() { p.pipe(client, server); ended <- struct{}{} }()
	<-ended
	client.Close()
	server.Close()
}

// pipe copies from src to dst, each chunk once its delay has passed, until
// reading src fails. Chunks read before the end are still delivered, as a
// network delivers what was sent before a FIN.
func (p *Proxy) pipe(dst, src net.Conn) {
	type chunk struct {
		due  time.Time
		data []byte
	}
	queue := make(chan chunk, 1024)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for c := range queue {
			if wait := time.Until(c.due); wait > 0 {
				time.Sleep(wait) // the network's delay itself, not a wait for an event
			}
			if _, err := dst.Write(c.data); err != nil {
				src.Close()
				for range queue {
				}
				return
			}
		}
	}()
	for {
		buf := make([]byte, 32<<10)
		n, err := src.Read(buf)
		if n > 0 {
			queue <- chunk{time.Now().Add(time.Duration(p.delay.Load())), buf[:n]}
		}
		if err != nil {
			close(queue)
			<-writerDone
			return
		}
	}
}

func (p *Proxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil || p.down {
		for _, c := range conns {
			c.Close()
		}
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *Proxy) untrack(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		delete(p.conns, c)
	}
}

// close stops the proxy and ends its connections.
func (p *Proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}
