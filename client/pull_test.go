package client_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/dalvdb/dalv/client"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/wait"
)

func TestPagedCatchUpIsExposedAtOnce(t *testing.T) {
	// Answers of about 2,000 bytes: 1,000 keys come in many pages.
	srv := startServer(t, "--max-value-bytes", "100", "--max-response-bytes", "2000")
	const user = "pager"
	for i := range 50 {
		var ops []*dalvv1.Op
		for j := range 20 {
			ops = append(ops, put(fmt.Sprintf("k/%04d", i*20+j), fmt.Sprintf("v%d", i*20+j)))
		}
		srv.commit(t, user, ops...)
	}
	a, _ := device(t, srv, "a.db", user, client.Options{})
	if err := a.Put("mine", []byte("x")); err != nil {
		t.Fatal(err)
	}
	// A reader polling during the sync sees none of the keys or all.
	done := make(chan struct{})
	counts := make(chan map[int]bool, 1)
	go func() {
		seen := make(map[int]bool)
		defer func() { counts <- seen }()
		for {
			items, err := a.List("k/")
			if err != nil {
				t.Error(err)
				return
			}
			seen[len(items)] = true
			select {
			case <-done:
				return
			default:
			}
		}
	}()
	err := a.Sync(context.Background())
	close(done)
	if err != nil {
		t.Fatal(err)
	}
	seen := <-counts
	for n := range seen {
		if n != 0 && n != 1000 {
			t.Errorf("a reader saw %d of the 1000 keys: the catch-up was exposed in parts (%v)", n, seen)
		}
	}
	requireSame(t, srv, user, a)
}

func TestResetReplacesState(t *testing.T) {
	// History is kept for a second: a device further behind gets a reset,
	// paged.
	srv := startServer(t, "--retention", "1s", "--max-value-bytes", "100", "--max-response-bytes", "2000")
	const user = "resetter"
	srv.commit(t, user, put("gone", "x"), put("stays", "1"))
	a, _ := device(t, srv, "a.db", user, client.Options{})
	mustSync(t, a)
	base := a.Status().Version
	srv.commit(t, user, del("gone"))
	for i := range 15 {
		var ops []*dalvv1.Op
		for j := range 20 {
			ops = append(ops, put(fmt.Sprintf("new/%03d", i*20+j), "v"))
		}
		srv.commit(t, user, ops...)
	}
	raw := dalvv1connect.NewClientServiceClient(newNet(srv).client(), "http://dalv.test")
	wait.For(t, 20*time.Second, func() error {
		req := connect.NewRequest(&dalvv1.SyncRequest{DeviceId: "probe", BaseVersion: base})
		req.Header().Set("Authorization", "Bearer "+mustToken(t, user))
		resp, err := raw.Sync(context.Background(), req)
		if err != nil {
			return err
		}
		if !resp.Msg.GetReset_() {
			return fmt.Errorf("no reset yet from version %d (horizon %d)", base, resp.Msg.GetHorizon())
		}
		return nil
	})
	// A pending write of the device meets the reset too.
	if err := a.Put("mine", []byte("m")); err != nil {
		t.Fatal(err)
	}
	mustSync(t, a)
	requireSame(t, srv, user, a)
	if got := getString(t, a, "gone"); got != "<absent>" {
		t.Errorf("gone = %s after the reset, want absent", got)
	}
}

func TestErasedPartitionReachesWatchingDevice(t *testing.T) {
	srv := startServer(t)
	const user = "eraser"
	srv.commit(t, user, put("a", "1"), put("b", "2"))
	d, _ := device(t, srv, "d.db", user, client.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 20*time.Second, func() error {
		if st := d.Status(); !st.Watching || len(localState(t, d)) != 2 {
			return fmt.Errorf("status %+v, %d keys", st, len(localState(t, d)))
		}
		return nil
	})
	if _, err := srv.backend().DeletePartition(context.Background(), connect.NewRequest(&dalvv1.DeletePartitionRequest{User: user})); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 20*time.Second, func() error {
		if n := len(localState(t, d)); n != 0 {
			return fmt.Errorf("%d keys left after the erase", n)
		}
		return nil
	})
	srv.commit(t, user, put("c", "3"))
	wait.For(t, 20*time.Second, func() error {
		if got := getString(t, d, "c"); got != `"3"` {
			return fmt.Errorf("c = %s", got)
		}
		return nil
	})
	requireSame(t, srv, user, d)
}

func TestSharedPartitions(t *testing.T) {
	srv := startServer(t, "--shared", "catalog", "--shared", "beta=tier:beta")
	srv.backend() // the server is up
	commitShared := func(ops ...*dalvv1.Op) {
		t.Helper()
		if _, err := srv.backend().Commit(context.Background(), connect.NewRequest(&dalvv1.CommitRequest{Shared: "catalog", Ops: ops})); err != nil {
			t.Fatal(err)
		}
	}
	commitShared(put("cats/1", "shoes"))
	d, _ := device(t, srv, "d.db", "sharer", client.Options{Shared: []string{"catalog", "beta"}})
	err := d.Sync(context.Background())
	if err == nil || !errorsIs(err, client.ErrNotShared) {
		t.Errorf("sync with an unreadable shared partition: %v, want ErrNotShared", err)
	}
	cat := d.Shared("catalog")
	v, err := cat.Get("cats/1")
	if err != nil || string(v.GetScalar()) != "shoes" {
		t.Fatalf("catalog cats/1 = %v, %v", v, err)
	}
	if _, err := d.Shared("other").Get("x"); !errorsIs(err, client.ErrNotShared) {
		t.Errorf("read of a partition not kept: %v", err)
	}
	if err := cat.Put("cats/2", []byte("x")); !errorsIs(err, client.ErrReadOnly) {
		t.Errorf("write to a shared partition: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan client.Change, 10)
	defer cat.Subscribe("cats/", func(c client.Change) { got <- c })()
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 20*time.Second, func() error {
		if st := d.Status(); !st.Watching {
			return fmt.Errorf("not watching")
		}
		return nil
	})
	commitShared(put("cats/2", "hats"))
	select {
	case c := <-got:
		if c.Partition != "catalog" || c.Key != "cats/2" || string(c.Value.GetScalar()) != "hats" || !c.Remote {
			t.Errorf("change %+v", c)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the shared partition's change did not arrive live")
	}
	items, err := cat.List("")
	if err != nil || len(items) != 2 {
		t.Errorf("catalog = %v, %v", items, err)
	}
}

// TestServerBehindTheDevice: the server lost its data (a new data
// directory), so the device's version is ahead of it. The device takes the
// server's state again, keeps its pending write and sends it.
func TestServerBehindTheDevice(t *testing.T) {
	srv := startServer(t)
	const user = "kim"
	srv.commit(t, user, put("old1", "x"), put("old2", "y"))
	srv.commit(t, user, put("old3", "z"))
	a, net := device(t, srv, "a.db", user, client.Options{})
	mustSync(t, a)
	if got := a.Status().Version; got != 2 {
		t.Fatalf("version %d, want 2", got)
	}
	fresh := startServer(t)
	net.mu.Lock()
	net.srv = fresh
	net.mu.Unlock()
	fresh.commit(t, user, put("new", "n"))
	if err := a.Put("mine", []byte("m")); err != nil {
		t.Fatal(err)
	}
	mustSync(t, a)
	requireSame(t, fresh, user, a)
	if got := getString(t, a, "old1"); got != "<absent>" {
		t.Errorf("old1 = %s: the device kept state the server no longer has", got)
	}
	if got := getString(t, a, "mine"); got != `"m"` {
		t.Errorf("mine = %s: the pending write was lost", got)
	}
}
