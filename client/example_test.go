package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"time"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/client"
	dalvserver "github.com/dalvdb/dalv/server"
	"github.com/dalvdb/dalv/store/pebble"
)

// exampleServer starts a DalvDB server inside this process, on a temporary
// directory, and returns its URL, a token source for user, and a function
// that stops it. Applications talk to `dalv serve` instead.
func exampleServer(user string) (url string, tokens func(context.Context) (string, error), stop func()) {
	dir, err := os.MkdirTemp("", "dalv-example")
	if err != nil {
		log.Fatal(err)
	}
	st, err := pebble.Open(filepath.Join(dir, "data"), pebble.Options{})
	if err != nil {
		log.Fatal(err)
	}
	secret := []byte("example-secret-0123456789abcdef0123456789")
	verifier, err := auth.NewHS256(secret, auth.HS256Options{})
	if err != nil {
		log.Fatal(err)
	}
	keys, err := auth.NewKeySet([]string{"example-backend-key-0123"})
	if err != nil {
		log.Fatal(err)
	}
	srv, err := dalvserver.New(dalvserver.Config{Store: st, Verifier: verifier, BackendKeys: keys})
	if err != nil {
		log.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	tokens = func(context.Context) (string, error) { return auth.Mint(secret, user, time.Hour, time.Now()) }
	return hs.URL, tokens, func() {
		hs.Close()
		st.Close()
		os.RemoveAll(dir)
	}
}

func tempFile(name string) (string, func()) {
	dir, err := os.MkdirTemp("", "dalv-replica")
	if err != nil {
		log.Fatal(err)
	}
	return filepath.Join(dir, name), func() { os.RemoveAll(dir) }
}

// Open a replica, write and read locally. No server is needed: everything
// works offline, and the writes wait in the file until a sync.
func Example() {
	path, cleanup := tempFile("app.replica")
	defer cleanup()
	r, err := client.Open(path, client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()

	if err := r.PutJSON("prefs/theme", "dark"); err != nil { // durable when it returns
		log.Fatal(err)
	}
	var theme string
	if err := r.GetJSON("prefs/theme", &theme); err != nil {
		log.Fatal(err)
	}
	_, err = r.Get("prefs/missing")
	fmt.Println(theme, errors.Is(err, client.ErrNotFound))
	fmt.Println("pending batches:", r.Status().Pending)

	// A system-domain key is refused on the device, naming the key.
	fmt.Println(r.Put("sys/orders", []byte("x")))
	// Output:
	// dark true
	// pending batches: 1
	// write "sys/orders": system-domain key is read-only on devices (it is under the system prefix "sys/", which only backends write)
}

// A transaction: several writes that apply together on the device and
// reach the server as one commit.
func ExampleReplica_Update() {
	path, cleanup := tempFile("app.replica")
	defer cleanup()
	r, err := client.Open(path, client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()

	err = r.Update(func(tx *client.Tx) error {
		if err := tx.ListAdd("cart/items", []byte("milk")); err != nil {
			return err
		}
		if err := tx.ListAdd("cart/items", []byte("eggs")); err != nil {
			return err
		}
		return tx.PutJSON("cart/updated", "2025-06-01")
	})
	if err != nil {
		log.Fatal(err)
	}
	items, err := r.List("cart/")
	if err != nil {
		log.Fatal(err)
	}
	for _, it := range items {
		if list := it.Value.GetList(); list != nil {
			fmt.Printf("%s: %q\n", it.Key, list.GetItems())
		} else {
			fmt.Printf("%s: %s\n", it.Key, it.Value.GetScalar())
		}
	}
	fmt.Println("pending batches:", r.Status().Pending)
	// Output:
	// cart/items: ["milk" "eggs"]
	// cart/updated: "2025-06-01"
	// pending batches: 1
}

// Subscribe to a prefix to re-render when anything under it changes,
// locally or from the server.
func ExampleReplica_Subscribe() {
	path, cleanup := tempFile("app.replica")
	defer cleanup()
	r, err := client.Open(path, client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()

	changes := make(chan client.Change, 10)
	cancel := r.Subscribe("prefs/", func(c client.Change) { changes <- c })
	defer cancel()

	if err := r.Put("prefs/lang", []byte("nb")); err != nil {
		log.Fatal(err)
	}
	if err := r.Put("other/key", []byte("not under prefs/")); err != nil {
		log.Fatal(err)
	}
	if err := r.Delete("prefs/lang"); err != nil {
		log.Fatal(err)
	}
	for range 2 {
		c := <-changes
		fmt.Printf("%s -> %q (remote: %v)\n", c.Key, c.Value.GetScalar(), c.Remote)
	}
	// Output:
	// prefs/lang -> "nb" (remote: false)
	// prefs/lang -> "" (remote: false)
}

// Sync two devices of one user that edited the same key while offline; a
// resolver decides. Here the server is in this process.
func ExampleReplica_Sync() {
	url, tokens, stop := exampleServer("alice")
	defer stop()
	resolver := func(c client.Conflict) client.Resolution {
		fmt.Printf("conflict on %s: base %s, local %s, remote %s\n", c.Key, c.Base.GetScalar(), c.Local.GetScalar(), c.Remote.GetScalar())
		return client.ClientWins(c)
	}
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "dalv-devices")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	open := func(name string) *client.Replica {
		r, err := client.Open(filepath.Join(dir, name), client.Options{ServerURL: url, TokenSource: tokens, Resolver: resolver})
		if err != nil {
			log.Fatal(err)
		}
		return r
	}
	phone, laptop := open("phone"), open("laptop")
	defer phone.Close()
	defer laptop.Close()

	must := func(err error) {
		if err != nil {
			log.Fatal(err)
		}
	}
	must(phone.Put("prefs/theme", []byte("light")))
	must(phone.Sync(ctx))
	must(laptop.Sync(ctx))

	// Both edit offline, then sync.
	must(phone.Put("prefs/theme", []byte("dark")))
	must(laptop.Put("prefs/theme", []byte("blue")))
	must(phone.Sync(ctx))
	must(laptop.Sync(ctx)) // the laptop meets the phone's change
	must(phone.Sync(ctx))

	for _, r := range []*client.Replica{phone, laptop} {
		v, err := r.Get("prefs/theme")
		must(err)
		fmt.Printf("%s\n", v.GetScalar())
	}
	// Output:
	// conflict on prefs/theme: base light, local blue, remote dark
	// blue
	// blue
}

// MergeJSON merges JSON objects field by field; a field changed on both
// sides is deferred to the inbox (or handed to a fallback, with
// MergeJSONWith).
func ExampleMergeJSON() {
	c := client.Conflict{
		Key:    "profile",
		Base:   client.Scalar([]byte(`{"name":"Al","city":"Oslo"}`)),
		Local:  client.Scalar([]byte(`{"name":"Alice","city":"Oslo"}`)),
		Remote: client.Scalar([]byte(`{"name":"Al","city":"Bergen"}`)),
	}
	res := client.MergeJSON(c)
	fmt.Printf("%s\n", res.Value().GetScalar())

	c.Remote = client.Scalar([]byte(`{"name":"Alfred","city":"Oslo"}`))
	fmt.Println("deferred:", client.MergeJSON(c).Deferred())

	localWins := client.MergeJSONWith(client.ClientWins)
	fmt.Printf("%s\n", localWins(c).Value().GetScalar())
	// Output:
	// {"city":"Bergen","name":"Alice"}
	// deferred: true
	// {"city":"Oslo","name":"Alice"}
}

// Start syncs in the background: soon after each local write, live from the
// server's watch, and again by itself after the network comes back.
func ExampleReplica_Start() {
	url, tokens, stop := exampleServer("bob")
	defer stop()
	path, cleanup := tempFile("app.replica")
	defer cleanup()
	r, err := client.Open(path, client.Options{ServerURL: url, TokenSource: tokens})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := r.Start(ctx); err != nil {
		log.Fatal(err)
	}
	if err := r.ListAdd("cart/items", []byte("bread")); err != nil {
		log.Fatal(err)
	}
	// An application would rather show a badge; here, poll a while.
	for deadline := time.Now().Add(10 * time.Second); r.Status().Pending > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Println("synced, user", r.User())
	// Output:
	// synced, user bob
}

// A damaged replica file: Open refuses it with ErrCorrupt, or, with
// OnCorrupt set, sets it aside and starts afresh with the pending writes it
// could read.
func ExampleOptions_onCorrupt() {
	path, cleanup := tempFile("app.replica")
	defer cleanup()
	r, err := client.Open(path, client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	if err := r.Put("notes/1", []byte("written offline")); err != nil {
		log.Fatal(err)
	}
	r.Close()
	// Damage both meta pages: the first two pages of the file.
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		log.Fatal(err)
	}
	for _, off := range []int64{16, int64(os.Getpagesize()) + 16} {
		if _, err := f.WriteAt(make([]byte, 4), off); err != nil {
			log.Fatal(err)
		}
	}
	f.Close()

	if _, err := client.Open(path, client.Options{}); !errors.Is(err, client.ErrCorrupt) {
		log.Fatalf("open: %v", err)
	}
	fmt.Println("refused as corrupt")

	r, err = client.Open(path, client.Options{OnCorrupt: func(rep client.CorruptReport) {
		fmt.Printf("set aside: %v; salvaged %d batches; device id kept: %v; lost: %q\n",
			rep.MovedTo != "", rep.Batches, rep.DeviceIDKept, rep.Lost)
	}})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	v, _ := r.Get("notes/1")
	fmt.Printf("%s\n", v.GetScalar())
	// Output:
	// refused as corrupt
	// set aside: true; salvaged 1 batches; device id kept: true; lost: []
	// written offline
}
