package e2e

import (
	binenc "encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/internal/wait"
)

// This file holds the tests of the bounds on streams: what readers that
// never read may hold (memory, descriptors), the caps on open watches per
// user, per device and of the backend feed, and the write deadline.

// bigPartition fills user's partition with 120 keys of 30 KB of random
// bytes (3.6 MB, which gzip does not shrink) in bigCommits backend commits
// of 2 keys, and returns the last version.
func bigPartition(t testing.TB, srv *proc.Server, user string) uint64 {
	t.Helper()
	b := backendClient(t, srv)
	rng := rand.NewChaCha8([32]byte{1})
	var v uint64
	for c := range bigCommits {
		var o []*dalvv1.Op
		for k := range 2 {
			val := make([]byte, 30_000)
			_, _ = rng.Read(val)
			o = append(o, &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: fmt.Sprintf("big/%03d", c*2+k), Value: &dalvv1.Value{Kind: &dalvv1.Value_Scalar{Scalar: val}}})
		}
		v = commit(t, b, user, o...)
	}
	return v
}

// bigCommits is the number of commits bigPartition makes.
const bigCommits = 60

// rawStream opens a server stream of procedure on a raw TCP connection
// (HTTP/1.1, the Connect protocol with protobuf, gzip accepted as Connect's
// clients send it) and never reads the answer. The socket's receive buffer
// is a few KiB, so the server's writes stop once its own send buffer is
// full. The connection is closed when the test ends.
func rawStream(t testing.TB, srv *proc.Server, procedure, authorization string, msg proto.Message) *net.TCPConn {
	t.Helper()
	d := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<10)
		})
		return errors.Join(err, serr)
	}}
	conn, err := d.DialContext(ctx(t), "tcp", srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	body, err := proto.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	env := binenc.BigEndian.AppendUint32([]byte{0}, uint32(len(body)))
	env = append(env, body...)
	head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/connect+proto\r\n"+
		"Connect-Protocol-Version: 1\r\nConnect-Accept-Encoding: gzip\r\nAuthorization: %s\r\nContent-Length: %d\r\n\r\n",
		procedure, srv.Addr, authorization, len(env))
	if _, err := conn.Write(append([]byte(head), env...)); err != nil {
		t.Fatal(err)
	}
	return conn.(*net.TCPConn)
}

// unread is the number of bytes waiting unread in conn's receive buffer.
func unread(t testing.TB, conn *net.TCPConn) int {
	t.Helper()
	rc, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int32
	var errno syscall.Errno
	err = rc.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&n)))
	})
	if err == nil && errno != 0 {
		err = errno
	}
	if err != nil {
		t.Fatalf("unread bytes: %v", err)
	}
	return int(n)
}

// gauge reads a gauge or counter of srv's /metrics, 0 when absent.
func gauge(t testing.TB, srv *proc.Server, family string, labels map[string]string) float64 {
	t.Helper()
	m := metric(scrape(t, srv), family, labels)
	if m == nil {
		return 0
	}
	if m.GetCounter() != nil {
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}

// closedByServer reads conn to its end and fails the test when the server
// has not closed it within wait.
func closedByServer(t testing.TB, conn *net.TCPConn, wait time.Duration) int64 {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(wait))
	n, err := io.Copy(io.Discard, conn)
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("the server had not closed the connection %v later (%d bytes read)", wait, n)
	case err != nil && !errors.Is(err, syscall.ECONNRESET):
		t.Fatalf("reading the stream: %v", err)
	}
	return n
}

// syncWithin checks that a Sync of a user with no streams answers within
// a second: the best of three, so that one pause of a machine shared with
// other work does not decide it.
func syncWithin(t testing.TB, srv *proc.Server, user string) {
	t.Helper()
	c := deviceClient(t, srv, user)
	best := time.Hour
	for i := range 3 {
		start := time.Now()
		mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: uint64(i), Batch: uint64(i + 1), Ops: ops(opPut("k", fmt.Sprint(i)))})
		best = min(best, time.Since(start))
	}
	if best > time.Second {
		t.Fatalf("another user's Sync took %v at best, want under a second", best)
	}
}

// watchMemoryBound is the most resident memory the server may reach with
// 150 watches that never read, from version 0, on a 3.6 MB partition. On
// the development machine the server peaked at 2.7-2.9 GB before watches sent
// their catch-up in pages; with pages of 64 KiB it peaks near 360 MB (of
// which about 80 MB are gzip compressors, one per stream compressing at
// once, and most of the rest garbage the collector has yet to return).
const watchMemoryBound = 512 << 20

// TestWatchMemoryNeverRead opens 150 watches of one user from version 0 of
// a 3.6 MB partition over raw connections that never read, and checks that
// the server's resident memory stays under watchMemoryBound: a watch holds
// one page of its catch-up, not the partition. The write deadline is long,
// so the pages alone are what bound the memory here.
func TestWatchMemoryNeverRead(t *testing.T) {
	t.Parallel()
	const (
		user    = "hoarder"
		watches = 150
	)
	srv := startServer(t, "--max-watches-per-user", fmt.Sprint(watches), "--stream-write-timeout", "10m")
	head := bigPartition(t, srv, user)
	before, err := srv.RSS()
	if err != nil {
		t.Fatal(err)
	}
	auth := "Bearer " + token(t, user)
	conns := make([]*net.TCPConn, watches)
	for i := range conns {
		conns[i] = rawStream(t, srv, dalvv1connect.ClientServiceWatchProcedure, auth, &dalvv1.WatchRequest{DeviceId: fmt.Sprint("d", i)})
	}
	// Stuck: every watch open, each connection holds some bytes of its
	// catch-up, and no byte more arrives for a second.
	var peak int64
	total, still := -1, 0
	wait.ForEvery(t, 2*time.Minute, 250*time.Millisecond, func() error {
		rss, err := srv.RSS()
		if err != nil {
			return err
		}
		peak = max(peak, rss)
		if open := gauge(t, srv, "dalv_device_watches", nil); open != watches {
			still = 0
			return fmt.Errorf("%v watches open, want %d", open, watches)
		}
		sum := 0
		for i, c := range conns {
			n := unread(t, c)
			if n == 0 {
				still = 0
				return fmt.Errorf("watch %d has received nothing yet", i)
			}
			sum += n
		}
		if sum != total {
			total, still = sum, 0
			return fmt.Errorf("the watches still receive (%d bytes so far)", sum)
		}
		if still++; still < 4 {
			return fmt.Errorf("the watches received nothing more for %d polls", still)
		}
		return nil
	})
	t.Logf("server RSS %.1f MB before the watches, peak %.1f MB with %d stuck watches of version %d (bound %d MB)",
		float64(before)/1e6, float64(peak)/1e6, watches, head, watchMemoryBound>>20)
	if peak > watchMemoryBound {
		t.Fatalf("server RSS reached %.1f MB with %d never-read watches of a 3.6 MB partition, over the bound of %d MB", float64(peak)/1e6, watches, watchMemoryBound>>20)
	}
	syncWithin(t, srv, "bystander")
}

// TestWatchWriteDeadline checks that a watch that never reads is ended
// once a message has waited --stream-write-timeout to be written: the
// server closes the connection, counts it, frees its slot, and another
// user's Sync answers within a second meanwhile. The same device then
// watches again and gets the whole partition.
func TestWatchWriteDeadline(t *testing.T) {
	t.Parallel()
	const user = "stalled"
	srv := startServer(t, "--stream-write-timeout", "1s", "--max-watches-per-device", "1")
	head := bigPartition(t, srv, user)
	conn := rawStream(t, srv, dalvv1connect.ClientServiceWatchProcedure, "Bearer "+token(t, user), &dalvv1.WatchRequest{DeviceId: "d"})
	wait.ForEvery(t, 30*time.Second, 100*time.Millisecond, func() error {
		if n := gauge(t, srv, "dalv_stream_write_timeouts_total", map[string]string{"stream": "device"}); n != 1 {
			return fmt.Errorf("%v device streams ended by the write deadline, want 1", n)
		}
		if n := gauge(t, srv, "dalv_device_watches", nil); n != 0 {
			return fmt.Errorf("%v watches still open", n)
		}
		return nil
	})
	syncWithin(t, srv, "bystander")
	if n := closedByServer(t, conn, 10*time.Second); n >= 3_600_000 {
		t.Fatalf("the cut watch delivered %d bytes: all of its catch-up", n)
	}
	if got := gauge(t, srv, "dalv_requests_total", map[string]string{"procedure": dalvv1connect.ClientServiceWatchProcedure, "code": "resource_exhausted"}); got != 1 {
		t.Errorf("dalv_requests_total{Watch, resource_exhausted} = %v, want 1", got)
	}
	// The slot is free again (one watch per device here), and a reader
	// gets everything.
	w := watchDevice(t, srv, user, &dalvv1.WatchRequest{DeviceId: "d"})
	evs, at := watchCatchUp(t, w)
	keys := 0
	for _, ev := range evs {
		keys += len(ev.GetChanges())
	}
	if at != head || keys != 120 {
		t.Fatalf("watching again: %d keys in %d events up to version %d, want 120 keys up to %d", keys, len(evs), at, head)
	}
	if len(evs) < 2 {
		t.Errorf("a 3.6 MB catch-up came in %d event, want pages of --stream-page-bytes", len(evs))
	}
}

// TestFeedWriteDeadline checks that a backend feed that never reads is
// ended by the write deadline, and that its slot is free again.
func TestFeedWriteDeadline(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "--stream-write-timeout", "1s", "--max-feed-watches", "1")
	bigPartition(t, srv, "fed")
	conn := rawStream(t, srv, dalvv1connect.BackendServiceWatchProcedure, "Bearer "+testBackendKey, &dalvv1.BackendServiceWatchRequest{Cursor: "start"})
	wait.ForEvery(t, 30*time.Second, 100*time.Millisecond, func() error {
		if n := gauge(t, srv, "dalv_stream_write_timeouts_total", map[string]string{"stream": "feed"}); n != 1 {
			return fmt.Errorf("%v feed streams ended by the write deadline, want 1", n)
		}
		if n := gauge(t, srv, "dalv_feed_watches", nil); n != 0 {
			return fmt.Errorf("%v feed watches still open", n)
		}
		return nil
	})
	syncWithin(t, srv, "bystander")
	closedByServer(t, conn, 10*time.Second)
	f := watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{Cursor: "start"})
	feedStart(t, f)
	for v := uint64(1); v <= bigCommits; v++ {
		if ev := feedNext(t, f); ev.GetVersion() != v || len(ev.GetOps()) != 2 {
			t.Fatalf("feed event %d: version %d with %d ops, want version %d with 2", v, ev.GetVersion(), len(ev.GetOps()), v)
		}
	}
}

// TestWatchCaps checks that a watch past --max-watches-per-device or
// --max-watches-per-user is refused with resource_exhausted naming the
// flag, that other users are not affected, and that closing a watch frees
// its slot.
func TestWatchCaps(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "--max-watches-per-user", "3", "--max-watches-per-device", "2")
	const user = "capped"
	open := func(user, device string) *streamPump[dalvv1.WatchEvent] {
		t.Helper()
		w := watchDevice(t, srv, user, &dalvv1.WatchRequest{DeviceId: device})
		watchCatchUp(t, w)
		return w
	}
	a1 := open(user, "A")
	open(user, "A")
	w := watchDevice(t, srv, user, &dalvv1.WatchRequest{DeviceId: "A"})
	wantError(t, w.end(t, streamWait), connect.CodeResourceExhausted, "--max-watches-per-device", `"A"`)
	open(user, "B")
	w = watchDevice(t, srv, user, &dalvv1.WatchRequest{DeviceId: "C"})
	wantError(t, w.end(t, streamWait), connect.CodeResourceExhausted, "--max-watches-per-user", user)
	// Another user is unaffected.
	for _, d := range []string{"A", "A", "B"} {
		open("other", d)
	}
	// A closed watch frees its slot once the server sees it gone.
	a1.stop()
	wait.ForEvery(t, 10*time.Second, 50*time.Millisecond, func() error {
		w := watchDevice(t, srv, user, &dalvv1.WatchRequest{DeviceId: "C"})
		ev, err := w.next(t, streamWait)
		if err != nil {
			return err
		}
		if !ev.GetHeartbeat() {
			return fmt.Errorf("first event %v, want the catch-up's heartbeat", ev)
		}
		return nil
	})
}

// TestFeedWatchCap checks that a backend feed watch past
// --max-feed-watches is refused with resource_exhausted naming the flag,
// and admitted again once one closes.
func TestFeedWatchCap(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "--max-feed-watches", "2")
	f1 := watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{})
	feedStart(t, f1)
	feedStart(t, watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{}))
	f := watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{})
	wantError(t, f.end(t, streamWait), connect.CodeResourceExhausted, "--max-feed-watches")
	f1.stop()
	wait.ForEvery(t, 10*time.Second, 50*time.Millisecond, func() error {
		f := watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{})
		ev, err := f.next(t, streamWait)
		if err != nil {
			return err
		}
		if !ev.GetHeartbeat() {
			return fmt.Errorf("first event %v, want a heartbeat", ev)
		}
		return nil
	})
}

// TestWatchResetInPages checks that a reset, too, comes in pages of
// --stream-page-bytes: a watch from below the retention horizon of a
// 3.6 MB partition gets several reset events, more set on all but the
// last, that hold the whole partition and no tombstone.
func TestWatchResetInPages(t *testing.T) {
	t.Parallel()
	const user = "reset-pages"
	srv := startServer(t, "--retention", "2s")
	bigPartition(t, srv, user)
	head := commit(t, backendClient(t, srv), user, opDelete("big/000"))
	dev := deviceClient(t, srv, user)
	wait.ForEvery(t, 20*time.Second, 100*time.Millisecond, func() error {
		if !mustSync(t, dev, &dalvv1.SyncRequest{DeviceId: "probe", BaseVersion: 1}).GetReset_() {
			return errors.New("the tombstone of big/000 is not compacted yet")
		}
		return nil
	})
	w := watchDevice(t, srv, user, &dalvv1.WatchRequest{DeviceId: "d", FromVersion: 1})
	evs, at := watchCatchUp(t, w)
	if len(evs) < 2 || at != head {
		t.Fatalf("reset from version 1: %d events, heartbeat at %d; want pages up to %d", len(evs), at, head)
	}
	keys := map[string]bool{}
	for i, ev := range evs {
		if !ev.GetReset_() || ev.GetMore() != (i < len(evs)-1) {
			t.Fatalf("reset event %d of %d: reset %v more %v; want reset on every page, more on all but the last", i, len(evs), ev.GetReset_(), ev.GetMore())
		}
		for _, c := range ev.GetChanges() {
			if c.GetDeleted() || keys[c.GetKey()] {
				t.Fatalf("reset event %d: %s deleted %v, or sent twice", i, c.GetKey(), c.GetDeleted())
			}
			keys[c.GetKey()] = true
		}
	}
	if got, want := len(keys), 2*bigCommits-1; got != want {
		t.Fatalf("the reset held %d keys, want %d", got, want)
	}
}
