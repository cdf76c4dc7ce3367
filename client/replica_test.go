package client_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dalvdb/dalv/client"
	"github.com/dalvdb/dalv/internal/wait"
)

func TestOpenCreatesDeviceIDOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.db")
	r, err := client.Open(path, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	id := r.DeviceID()
	if len(id) != 32 {
		t.Errorf("device id %q: want 32 hex digits", id)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r, err = client.Open(path, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := r.DeviceID(); got != id {
		t.Errorf("device id after reopen = %q, want %q", got, id)
	}
	other, err := client.Open(filepath.Join(t.TempDir(), "other.db"), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if other.DeviceID() == id {
		t.Error("two replica files got the same device id")
	}
}

func TestOpenValidatesOptions(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		name string
		o    client.Options
		want string
	}{
		{"bad url", client.Options{ServerURL: "localhost:7070", TokenSource: tokens("a")}, "ServerURL"},
		{"no token source", client.Options{ServerURL: "http://127.0.0.1:1"}, "TokenSource"},
		{"shared twice", client.Options{Shared: []string{"catalog", "catalog"}}, "named twice"},
		{"negative retry", client.Options{RetryMin: -time.Second}, "RetryMin"},
		{"max below min", client.Options{RetryMin: time.Second, RetryMax: time.Millisecond}, "RetryMax"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.o
			_, err := client.Open(filepath.Join(dir, tt.name), o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open error = %v, want one naming %s", err, tt.want)
			}
			if o.RetryMin != tt.o.RetryMin || o.Logger != nil || o.HTTPClient != nil {
				t.Error("Open modified the caller's options")
			}
		})
	}
}

func TestSecondOpenIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.db")
	r := openAt(t, path, client.Options{})
	// In this process.
	if _, err := client.Open(path, client.Options{LockTimeout: 20 * time.Millisecond}); !errors.Is(err, client.ErrLocked) || !strings.Contains(err.Error(), path) {
		t.Errorf("second Open in process: error = %v, want ErrLocked naming the file", err)
	}
	// In another process.
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), childEnv+"=open", "DALV_CLIENT_TEST_FILE="+path)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use by another process") || !strings.Contains(string(out), path) {
		t.Errorf("second Open in another process: %v, output %q; want a clear error naming the file", err, out)
	}
	closeChecked(t, r)
	// Once closed, another process opens it.
	cmd = exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), childEnv+"=open", "DALV_CLIENT_TEST_FILE="+path)
	if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "opened" {
		t.Errorf("open after close in another process: %v, %q", err, out)
	}
}

func openAt(t testing.TB, path string, o client.Options) *client.Replica {
	t.Helper()
	r, err := client.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestLocalReadsSeePendingWrites(t *testing.T) {
	r := openReplica(t, "r.db", client.Options{})
	if _, err := r.Get("prefs/theme"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("Get of a missing key: %v, want ErrNotFound", err)
	}
	if err := r.Put("prefs/theme", []byte("dark")); err != nil {
		t.Fatal(err)
	}
	if err := r.PutJSON("prefs/size", map[string]int{"font": 14}); err != nil {
		t.Fatal(err)
	}
	if err := r.ListAdd("cart/items", []byte("milk")); err != nil {
		t.Fatal(err)
	}
	if err := r.ListAdd("cart/items", []byte("eggs")); err != nil {
		t.Fatal(err)
	}
	if err := r.ListAdd("cart/items", []byte("milk")); err != nil {
		t.Fatal(err)
	}
	if err := r.ListRemove("cart/items", []byte("bread")); err != nil {
		t.Fatal(err)
	}
	if got, want := getString(t, r, "prefs/theme"), `"dark"`; got != want {
		t.Errorf("theme = %s, want %s", got, want)
	}
	var size struct{ Font int }
	if err := r.GetJSON("prefs/size", &size); err != nil || size.Font != 14 {
		t.Errorf("GetJSON = %+v, %v; want font 14", size, err)
	}
	if got, want := getString(t, r, "cart/items"), "[milk,eggs]"; got != want {
		t.Errorf("cart = %s, want %s", got, want)
	}
	items, err := r.List("prefs/")
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 2 || items[0].Key != "prefs/size" || items[1].Key != "prefs/theme" {
		t.Errorf("List(prefs/) = %v, want size then theme", items)
	}
	if err := r.Delete("prefs/theme"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get("prefs/theme"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("Get after Delete: %v, want ErrNotFound", err)
	}
	if got, want := r.Status().Pending, 7; got != want {
		t.Errorf("pending batches = %d, want %d", got, want)
	}
	// Everything survives a reopen.
	path := r.Path()
	closeChecked(t, r)
	r = openAt(t, path, client.Options{})
	defer closeChecked(t, r)
	if got, want := getString(t, r, "cart/items"), "[milk,eggs]"; got != want {
		t.Errorf("cart after reopen = %s, want %s", got, want)
	}
	if got, want := r.Status().Pending, 7; got != want {
		t.Errorf("pending after reopen = %d, want %d", got, want)
	}
}

func TestUpdateIsAtomic(t *testing.T) {
	r := openReplica(t, "r.db", client.Options{})
	boom := errors.New("boom")
	err := r.Update(func(tx *client.Tx) error {
		if err := tx.Put("a", []byte("1")); err != nil {
			return err
		}
		if got, err := tx.Get("a"); err != nil || string(got.GetScalar()) != "1" {
			t.Errorf("tx.Get(a) = %v, %v: a transaction reads its own writes", got, err)
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want boom", err)
	}
	if _, err := r.Get("a"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("a write of a failed transaction shows: %v", err)
	}
	if n := r.Status().Pending; n != 0 {
		t.Errorf("pending = %d after a failed transaction", n)
	}
	err = r.Update(func(tx *client.Tx) error {
		for _, k := range []string{"t/a", "t/b", "t/c"} {
			if err := tx.Put(k, []byte("x")); err != nil {
				return err
			}
		}
		items, err := tx.List("t/")
		if err != nil || len(items) != 3 {
			t.Errorf("tx.List = %d items, %v; want 3", len(items), err)
		}
		return tx.ListAdd("t/log", []byte("1"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := r.Status().Pending; n != 1 {
		t.Errorf("pending = %d after one transaction, want 1 batch", n)
	}
}

func TestWritesRefusedLocally(t *testing.T) {
	r := openReplica(t, "r.db", client.Options{Shared: []string{"catalog"}})
	if err := r.Put("k", []byte("scalar")); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 1<<20+1)
	for _, tt := range []struct {
		name    string
		write   func() error
		want    error
		wantMsg string
	}{
		{"system key", func() error { return r.Put("sys/orders", []byte("x")) }, client.ErrSystemKey, `"sys/orders"`},
		{"system key in a transaction", func() error {
			return r.Update(func(tx *client.Tx) error {
				if err := tx.Put("ok", []byte("1")); err != nil {
					return err
				}
				return tx.Delete("sys/timeline")
			})
		}, client.ErrSystemKey, `"sys/timeline"`},
		{"shared partition", func() error { return r.Shared("catalog").Put("cats/1", []byte("x")) }, client.ErrReadOnly, `"cats/1"`},
		{"value over the limit", func() error { return r.Put("big", big) }, client.ErrLimit, `"big"`},
		{"key over the limit", func() error { return r.Put(strings.Repeat("k", 1025), nil) }, client.ErrLimit, "key limit"},
		{"empty key", func() error { return r.Put("", nil) }, client.ErrInvalid, "empty key"},
		{"control character", func() error { return r.Put("a\x01", nil) }, client.ErrInvalid, "control character"},
		{"list op on a scalar", func() error { return r.ListAdd("k", []byte("x")) }, client.ErrNotList, `"k"`},
		{"list with a duplicate", func() error { return r.PutValue("l", client.List([]byte("a"), []byte("a"))) }, client.ErrInvalid, `"l"`},
		{"too many ops", func() error {
			return r.Update(func(tx *client.Tx) error {
				for i := range 1001 {
					if err := tx.Put("many/"+strings.Repeat("x", i%7)+string(rune('a'+i%26)), []byte("v")); err != nil {
						return err
					}
				}
				return nil
			})
		}, client.ErrLimit, "1001 ops"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.write()
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("error = %v, want %v naming %s", err, tt.want, tt.wantMsg)
			}
		})
	}
	if n := r.Status().Pending; n != 1 {
		t.Errorf("pending = %d, want only the first write", n)
	}
	if _, err := r.Get("ok"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("the refused transaction's other write shows: %v", err)
	}
}

func TestSubscribeSeesLocalWrites(t *testing.T) {
	r := openReplica(t, "r.db", client.Options{})
	got := make(chan client.Change, 10)
	cancel := r.Subscribe("cart/", func(c client.Change) { got <- c })
	defer cancel()
	if err := r.Put("prefs/theme", []byte("dark")); err != nil {
		t.Fatal(err)
	}
	if err := r.Update(func(tx *client.Tx) error {
		if err := tx.ListAdd("cart/items", []byte("milk")); err != nil {
			return err
		}
		return tx.Put("cart/note", []byte("hi"))
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{"cart/items=[milk]", "cart/note=\"hi\""}
	for _, w := range want {
		select {
		case c := <-got:
			if s := c.Key + "=" + show(c.Value); s != w || c.Remote {
				t.Errorf("change %s (remote %v), want %s, local", s, c.Remote, w)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no change %s", w)
		}
	}
	select {
	case c := <-got:
		t.Errorf("unexpected change %v", c)
	default:
	}
}

func TestClosedReplica(t *testing.T) {
	r, err := client.Open(filepath.Join(t.TempDir(), "r.db"), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := r.Get("a"); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Get after Close: %v", err)
	}
	if err := r.Put("a", nil); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Put after Close: %v", err)
	}
}

func TestStartAgainAfterContextEnds(t *testing.T) {
	srv := startServer(t)
	a, _ := device(t, srv, "a.db", "jo", client.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(context.Background()); !errors.Is(err, client.ErrRunning) {
		t.Errorf("second Start: %v, want ErrRunning", err)
	}
	cancel()
	wait.For(t, 10*time.Second, func() error {
		ctx2, cancel2 := context.WithCancel(context.Background())
		defer cancel2()
		if err := a.Start(ctx2); err != nil {
			return err
		}
		a.Stop()
		return nil
	})
	if err := a.Put("k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 20*time.Second, func() error {
		if st := a.Status(); st.Pending != 0 {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
}

// TestSubscriberQueueOverflow holds a subscriber's callback while 50 writes
// are made with a queue bound of 5: the queue never holds more than 5, the
// subscriber gets an overflow mark in place of the dropped changes, and
// reading the prefix again after it gives the final state.
func TestSubscriberQueueOverflow(t *testing.T) {
	r := openReplica(t, "r.db", client.Options{MaxSubscriberQueue: 5})
	release := make(chan struct{})
	got := make(chan client.Change, 100)
	cancel := r.Subscribe("k/", func(c client.Change) {
		<-release
		got <- c
	})
	defer cancel()
	for i := range 50 {
		if err := r.Put(fmt.Sprintf("k/%02d", i), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	close(release)
	seen := make(map[string]string)
	overflows, n := 0, 0
	for len(seen) < 50 {
		select {
		case c := <-got:
			n++
			if !c.Overflow {
				seen[c.Key] = show(c.Value)
				continue
			}
			overflows++
			if c.Key != "k/" || c.Value != nil || c.Remote {
				t.Errorf("overflow mark %+v, want the prefix and no value", c)
			}
			items, err := r.List(c.Key)
			if err != nil {
				t.Fatal(err)
			}
			for _, it := range items {
				seen[it.Key] = show(it.Value)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("saw %d of 50 keys after %d changes", len(seen), n)
		}
	}
	// The first change was being delivered when the callback blocked; at
	// most 5 were queued behind it, the overflow mark among them.
	if overflows == 0 || n > 6 {
		t.Errorf("%d changes delivered with %d overflow marks, want at most 6 with one or more", n, overflows)
	}
	for i := range 50 {
		if k, want := fmt.Sprintf("k/%02d", i), fmt.Sprintf("%q", fmt.Sprint(i)); seen[k] != want {
			t.Errorf("%s = %s, want %s", k, seen[k], want)
		}
	}
}
