// Command cart is a small offline-first shopping cart on DalvDB's Go client
// SDK. Run `dalv serve --dev`, export the secrets it prints, then in two
// terminals run a cart for the same user from two "devices":
//
//	go run ./examples/cart -user alice -db phone.replica
//	go run ./examples/cart -user alice -db laptop.replica
//
// Type `help` for the commands. Items added on one device show on the other
// live; stop the server, keep adding on both, start it again, and both carts
// converge by themselves. The item list merges without conflicts (list
// ops); the cart's note and delivery day are a JSON object merged field by
// field, and an edit of the same field on both devices waits in the inbox
// until you settle it.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"time"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/client"
)

const (
	itemsKey = "cart/items"
	metaKey  = "cart/meta"
)

// meta is the cart's note and delivery day, merged field by field.
type meta struct {
	Note    string `json:"note,omitempty"`
	Deliver string `json:"deliver,omitempty"`
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "cart:", err)
		os.Exit(1)
	}
}

// run is the program, with its arguments and terminal passed in so a test
// can drive it.
func run(ctx context.Context, args []string, in io.Reader, out io.Writer) error {
	fs := flag.NewFlagSet("cart", flag.ContinueOnError)
	fs.SetOutput(out)
	serverURL := fs.String("server", "http://127.0.0.1:7070", "the DalvDB server")
	user := fs.String("user", "alice", "the user whose cart this is")
	path := fs.String("db", "cart.replica", "the replica file of this device")
	if err := fs.Parse(args); err != nil {
		return err
	}
	tokens, err := tokenSource(*user)
	if err != nil {
		return err
	}
	var mu sync.Mutex // one writer of out at a time
	say := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, format+"\n", a...)
	}
	r, err := client.Open(*path, client.Options{
		ServerURL:   *serverURL,
		TokenSource: tokens,
		Resolver:    client.MergeJSON,
		RetryMax:    5 * time.Second,
		OnRefused: func(b client.RefusedBatch) {
			say("! the server refused a change: %s", b.Message)
		},
	})
	if err != nil {
		return err
	}
	defer r.Close()
	defer r.Subscribe("cart/", func(c client.Change) {
		if c.Remote {
			say("~ from another device: %s", describe(c.Key, c.Value))
		}
	})()
	if err := r.Start(ctx); err != nil {
		return err
	}
	say("cart of %s on device %s (%s); type help", *user, r.DeviceID()[:8], *path)

	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(in)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	for {
		var line string
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case line, ok = <-lines:
			if !ok {
				return nil
			}
		}
		cmd, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
		arg = strings.TrimSpace(arg)
		var err error
		switch cmd {
		case "":
		case "help":
			say("add ITEM | rm ITEM | note TEXT | deliver DAY | show | status | conflicts | settle local|remote | sync | quit")
		case "add":
			err = r.ListAdd(itemsKey, []byte(arg))
		case "rm":
			err = r.ListRemove(itemsKey, []byte(arg))
		case "note", "deliver":
			err = r.Update(func(tx *client.Tx) error {
				var m meta
				if err := tx.GetJSON(metaKey, &m); err != nil && !errors.Is(err, client.ErrNotFound) {
					return err
				}
				if cmd == "note" {
					m.Note = arg
				} else {
					m.Deliver = arg
				}
				return tx.PutJSON(metaKey, m)
			})
		case "show":
			say("%s", show(r))
		case "status":
			st := r.Status()
			online := "offline"
			if st.Online {
				online = "online"
			}
			say("status: %s, %d pending, %d conflicts, version %d, last error: %v", online, st.Pending, st.Conflicts, st.Version, st.LastError)
		case "conflicts":
			cs, err2 := r.Conflicts()
			err = err2
			for _, c := range cs {
				say("conflict on %s: mine %s, theirs %s", c.Key, c.Local.GetScalar(), c.Remote.GetScalar())
			}
			if err == nil && len(cs) == 0 {
				say("no conflicts")
			}
		case "settle":
			err = settle(r, arg)
		case "sync":
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = r.Sync(sctx)
			cancel()
			if err == nil {
				say("synced")
			}
		case "quit", "exit":
			return nil
		default:
			err = fmt.Errorf("unknown command %q; type help", cmd)
		}
		if err != nil {
			say("! %v", err)
		}
	}
}

// settle ends the conflict on the cart's meta with this device's side or
// the other's.
func settle(r *client.Replica, side string) error {
	cs, err := r.Conflicts()
	if err != nil {
		return err
	}
	for _, c := range cs {
		switch side {
		case "local":
			return r.Settle(c.Key, client.Use(c.Local))
		case "remote":
			return r.Settle(c.Key, client.Use(c.Remote))
		default:
			return fmt.Errorf("settle local or settle remote")
		}
	}
	return errors.New("no conflicts to settle")
}

func show(r *client.Replica) string {
	var b strings.Builder
	b.WriteString("cart:")
	v, err := r.Get(itemsKey)
	switch {
	case errors.Is(err, client.ErrNotFound) || len(v.GetList().GetItems()) == 0:
		b.WriteString(" (empty)")
	case err != nil:
		return err.Error()
	default:
		for _, it := range v.GetList().GetItems() {
			fmt.Fprintf(&b, " %s", it)
		}
	}
	var m meta
	if err := r.GetJSON(metaKey, &m); err == nil {
		if m.Note != "" {
			fmt.Fprintf(&b, "; note: %s", m.Note)
		}
		if m.Deliver != "" {
			fmt.Fprintf(&b, "; deliver: %s", m.Deliver)
		}
	}
	return b.String()
}

func describe(key string, v *client.Value) string {
	switch {
	case v == nil:
		return key + " removed"
	case v.GetList() != nil:
		var items []string
		for _, it := range v.GetList().GetItems() {
			items = append(items, string(it))
		}
		return fmt.Sprintf("%s = [%s]", key, strings.Join(items, ", "))
	}
	return fmt.Sprintf("%s = %s", key, v.GetScalar())
}

// tokenSource gives device tokens: DALV_TOKEN as it is, or, for
// development, tokens minted with DALV_JWT_SECRET (which `dalv serve --dev`
// prints). A real application asks its login service instead.
func tokenSource(user string) (func(context.Context) (string, error), error) {
	if tok := os.Getenv("DALV_TOKEN"); tok != "" {
		return func(context.Context) (string, error) { return tok, nil }, nil
	}
	secret := os.Getenv("DALV_JWT_SECRET")
	if secret == "" {
		return nil, errors.New("set DALV_JWT_SECRET (printed by `dalv serve --dev`) or DALV_TOKEN (from `dalv token --user USER`)")
	}
	return func(context.Context) (string, error) {
		return auth.Mint([]byte(secret), user, time.Hour, time.Now())
	}, nil
}
