package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/internal/wait"
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

// terminal is a cart program's terminal: what is typed into it, and what
// it printed.
type terminal struct {
	name string
	in   io.WriteCloser
	out  *buffer
}

// send types line.
func (c *terminal) send(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(c.in, line+"\n"); err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
}

// await types probe (if any) until the output matches want, and returns
// the match.
func (c *terminal) await(t *testing.T, probe string, want *regexp.Regexp) string {
	t.Helper()
	var m string
	wait.ForEvery(t, 30*time.Second, 100*time.Millisecond, func() error {
		if m = want.FindString(c.out.String()); m != "" {
			return nil
		}
		if probe != "" {
			c.send(t, probe)
		}
		return fmt.Errorf("%s never showed %v:\n%s", c.name, want, c.out.String())
	})
	return m
}

// awaitText is await of the text want.
func (c *terminal) awaitText(t *testing.T, probe, want string) {
	t.Helper()
	c.await(t, probe, regexp.MustCompile(regexp.QuoteMeta(want)))
}

// lastShow is the last `show` line the cart printed.
func (c *terminal) lastShow() string {
	lines := strings.Split(c.out.String(), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "cart:") {
			return lines[i]
		}
	}
	return ""
}

// cart is a cart program running in this process, with its terminal.
type cart struct {
	terminal
	done chan error
}

func startCart(t *testing.T, ctx context.Context, url, db string) *cart {
	t.Helper()
	pr, pw := io.Pipe()
	c := &cart{terminal: terminal{name: filepath.Base(db), in: pw, out: &buffer{}}, done: make(chan error, 1)}
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

// freePort returns a loopback address whose port is free right now.
func freePort(t *testing.T) string {
	t.Helper()
	addr, err := proc.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
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
	phone.awaitText(t, "status", "status: offline, 3 pending")
	phone.send(t, "show")
	phone.awaitText(t, "", "cart: milk eggs; note: ring twice")

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
	phone.awaitText(t, "status", "status: online, 0 pending")

	laptop := startCart(t, ctx, "http://"+addr, filepath.Join(dir, "laptop.replica"))
	laptop.awaitText(t, "show", "cart: milk eggs; note: ring twice")
	laptop.send(t, "add bread")
	phone.awaitText(t, "", "~ from another device: cart/items = [milk, eggs, bread]")
	for _, c := range []*cart{phone, laptop} {
		c.send(t, "quit")
	}
	if t.Failed() {
		fmt.Fprintln(os.Stderr, srv.Stderr())
	}
}
