package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/internal/proc"
)

// cartProc is the cart program running as a child process, driven over its
// stdin and stdout as a person types.
type cartProc struct {
	terminal
	cmd  *exec.Cmd
	done chan struct{}
}

// cleanEnv is the environment without any DalvDB secret: a newcomer's
// terminal.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DALV_") {
			env = append(env, kv)
		}
	}
	return env
}

func startCartProc(t *testing.T, bin, dir, name string, args ...string) *cartProc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = cleanEnv()
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &cartProc{terminal: terminal{name: name, in: in, out: &buffer{}}, cmd: cmd, done: make(chan struct{})}
	cmd.Stderr = c.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.out.Write([]byte(sc.Text() + "\n"))
		}
		_ = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		in.Close()
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-c.done
			t.Errorf("%s did not end on end of input", name)
		}
		if t.Failed() {
			t.Logf("%s's terminal:\n%s", name, c.out.String())
		}
	})
	return c
}

func buildCart(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "cart")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build the cart: %v\n%s", err, out)
	}
	return bin
}

// TestReadmeOfflineWalkthrough does what the README's "Try it offline-first"
// asks of a newcomer, with no secret in any environment: `dalv serve --dev`
// in a directory, two carts beside it, items added on one show on the other;
// the server stopped with Ctrl-C (SIGINT), both carts edited offline (the
// same note on both, the delivery day on one), the server started again
// with the same command; the conflict is announced, settled for the one
// field, and both carts converge keeping the delivery day.
func TestReadmeOfflineWalkthrough(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	dalv, err := proc.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cartBin := buildCart(t, t.TempDir())
	addr := freePort(t)
	ctx := context.Background()
	serve := func() *proc.Server {
		t.Helper()
		// proc.Start runs `dalv serve --addr 127.0.0.1:0 --data DIR` and
		// the flags after; the later --addr wins, so both starts are the
		// same command on the same address.
		srv, err := proc.Start(ctx, proc.Options{Binary: dalv, Data: filepath.Join(work, "dalv-data"), Args: []string{"--addr", addr, "--dev", "--heartbeat", "200ms"},
			// No secret from the test's own environment either.
			Env: []string{"DALV_JWT_SECRET=", "DALV_BACKEND_KEYS="}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = srv.Kill() })
		return srv
	}
	srv := serve()

	url := "http://" + addr
	phone := startCartProc(t, cartBin, work, "phone", "-server", url, "-user", "alice", "-db", "phone.replica")
	laptop := startCartProc(t, cartBin, work, "laptop", "-server", url, "-user", "alice", "-db", "laptop.replica")
	phone.send(t, "add milk")
	laptop.await(t, "", regexp.MustCompile(`~ from another device: cart/items = \[milk\]`))

	// Ctrl-C on the server.
	if err := syscall.Kill(srv.PID(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-srv.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("dalv serve did not stop on SIGINT")
	}

	phone.send(t, "note ring twice")
	phone.send(t, "add eggs")
	laptop.send(t, "note leave at the door")
	laptop.send(t, "deliver friday")
	laptop.send(t, "add bread")
	phone.await(t, "status", regexp.MustCompile(`status: offline, 2 pending writes in \d+ batches, 0 conflicts, version \d+, last error: cannot reach the server`))
	laptop.await(t, "status", regexp.MustCompile(`status: offline, 3 pending writes in \d+ batches, 0 conflicts, version \d+, last error: cannot reach the server`))

	srv = serve()
	_ = srv

	// One of the two meets the other's note: it says so by itself.
	conflict := regexp.MustCompile(`! conflict on cart/meta: note: mine "[a-z ]+", theirs "[a-z ]+"; settle`)
	deadline := time.Now().Add(40 * time.Second)
	var settler *cartProc
	for settler == nil {
		for _, c := range []*cartProc{phone, laptop} {
			if conflict.MatchString(c.out.String()) {
				settler = c
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no conflict announced:\nphone:\n%s\nlaptop:\n%s", phone.out.String(), laptop.out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	settler.send(t, "settle local note")
	wantNote := "ring twice"
	if settler == laptop {
		wantNote = "leave at the door"
	}
	want := regexp.MustCompile(`^cart: (milk|eggs|bread)( (milk|eggs|bread)){2}; note: ` + wantNote + `; deliver: friday$`)
	deadline = time.Now().Add(40 * time.Second)
	for {
		phone.send(t, "sync")
		laptop.send(t, "sync")
		phone.send(t, "show")
		laptop.send(t, "show")
		time.Sleep(200 * time.Millisecond)
		p, l := phone.lastShow(), laptop.lastShow()
		if p == l && want.MatchString(p) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the carts did not converge: phone %q, laptop %q, want both to match %v", p, l, want)
		}
	}
	for _, c := range []*cartProc{phone, laptop} {
		c.await(t, "status", regexp.MustCompile(`status: online, 0 pending writes in 0 batches, 0 conflicts, version \d+, last error: none`))
		if strings.Contains(c.out.String(), "<nil>") || strings.Contains(c.out.String(), "unauthenticated") {
			t.Errorf("%s printed <nil> or was refused:\n%s", c.name, c.out.String())
		}
	}
}

// TestCartRefusesAnotherUsersToken: with DALV_TOKEN holding bob's token,
// `cart -user alice` exits with a message naming both users, before it
// opens a replica.
func TestCartRefusesAnotherUsersToken(t *testing.T) {
	tok, err := auth.Mint([]byte(testSecret), "bob", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("DALV_TOKEN", tok)
	db := filepath.Join(t.TempDir(), "alice.replica")
	var out buffer
	err = run(context.Background(), []string{"-server", "http://127.0.0.1:1", "-user", "alice", "-db", db}, strings.NewReader(""), &out)
	if err == nil || !strings.Contains(err.Error(), `"bob"`) || !strings.Contains(err.Error(), `"alice"`) {
		t.Fatalf("run with bob's token as alice: %v, want a refusal naming both", err)
	}
	if strings.Contains(out.String(), "cart of") {
		t.Errorf("the cart started anyway:\n%s", out.String())
	}
	if _, err := os.Stat(db); !os.IsNotExist(err) {
		t.Errorf("a replica file was created: %v", err)
	}
}
