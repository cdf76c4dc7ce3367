package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dalvdb/dalv/internal/proc"
)

const (
	testSecret = "cart-example-secret-0123456789abcdef01234"
	testKey    = "cart-example-backend-key-01"
)

// buffer is an io.Writer whose contents can be read while it is written.
type buffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// cart is a running cart program with its terminal.
type cart struct {
	in   *io.PipeWriter
	out  *buffer
	done chan error
}

func startCart(t *testing.T, ctx context.Context, url, db string) *cart {
	t.Helper()
	pr, pw := io.Pipe()
	c := &cart{in: pw, out: &buffer{}, done: make(chan error, 1)}
	go func() { c.done <- run(ctx, []string{"-server", url, "-user", "alice", "-db", db}, pr, c.out) }()
	t.Cleanup(func() {
		pw.Close()
		select {
		case err := <-c.done:
			if err != nil {
				t.Errorf("cart: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("cart did not end")
		}
	})
	return c
}

func (c *cart) send(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(c.in, line+"\n"); err != nil {
		t.Fatal(err)
	}
}

// await sends probe (if any) until the output holds want.
func (c *cart) await(t *testing.T, probe, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(c.out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("output never showed %q:\n%s", want, c.out.String())
		}
		if probe != "" {
			c.send(t, probe)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestCartOfflineThenOnline runs the example as its README says: a device
// adds items while the server is down, and the cart syncs by itself when it
// comes up; a second device then sees them, and its own additions reach the
// first live.
func TestCartOfflineThenOnline(t *testing.T) {
	dir := t.TempDir()
	bin, err := proc.Build(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("DALV_JWT_SECRET", testSecret)
	addr := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	phone := startCart(t, ctx, "http://"+addr, filepath.Join(dir, "phone.replica"))
	phone.send(t, "add milk")
	phone.send(t, "add eggs")
	phone.send(t, "note ring twice")
	phone.await(t, "status", "status: offline, 3 pending")
	phone.send(t, "show")
	phone.await(t, "", "cart: milk eggs; note: ring twice")

	srv, err := proc.Start(ctx, proc.Options{Binary: bin, Data: filepath.Join(dir, "data"), Args: []string{"--addr", addr, "--heartbeat", "200ms"},
		Env: []string{"DALV_JWT_SECRET=" + testSecret, "DALV_BACKEND_KEYS=" + testKey}, Stderr: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := srv.Stop(15 * time.Second); err != nil {
			t.Errorf("dalv serve: %v", err)
		}
	}()
	phone.await(t, "status", "status: online, 0 pending")

	laptop := startCart(t, ctx, "http://"+addr, filepath.Join(dir, "laptop.replica"))
	laptop.await(t, "show", "cart: milk eggs; note: ring twice")
	laptop.send(t, "add bread")
	phone.await(t, "", "~ from another device: cart/items = [milk, eggs, bread]")
	for _, c := range []*cart{phone, laptop} {
		c.send(t, "quit")
	}
	if t.Failed() {
		fmt.Fprintln(os.Stderr, srv.Stderr())
	}
}
