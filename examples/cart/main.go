// Command cart is a small offline-first shopping cart on DalvDB's Go client
// SDK. Run `dalv serve --dev`, then, in the same directory, run a cart for
// the same user from two "devices" in two more terminals (the cart finds the
// development secrets the server keeps in ./dalv-data; -data names another
// data directory):
//
//	go run ./examples/cart -user alice -db phone.replica
//	go run ./examples/cart -user alice -db laptop.replica
//
// Type `help` for the commands. Items added on one device show on the other
// live; stop the server, keep adding on both, start it again, and both carts
// converge by themselves. The item list merges without conflicts (list
// ops); the cart's note and delivery day are a JSON object merged field by
// field: an edit of the same field on both devices is announced at once and
// waits in the inbox until you settle that field (`settle local note`);
// every field nobody conflicted on keeps both devices' changes.
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

	"github.com/golang-jwt/jwt/v5"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/client"
	"github.com/dalvdb/dalv/internal/devsecret"
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
	data := fs.String("data", "./dalv-data", "the data directory of `dalv serve --dev`, whose development secrets mint tokens when DALV_JWT_SECRET is unset")
	if err := fs.Parse(args); err != nil {
		return err
	}
	tokens, err := tokenSource(*user, *data)
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
	// Conflicts are announced as they arrive: the resolver defers them
	// while syncing, and the key then shows the server's value, a change
	// that wakes announce.
	wake := make(chan struct{}, 1)
	announced := make(map[string]bool)
	announce := func() {
		cs, err := r.Conflicts()
		if err != nil {
			say("! %v", err)
			return
		}
		now := make(map[string]bool)
		for _, c := range cs {
			now[c.Key] = true
			if !announced[c.Key] {
				say("! conflict on %s: %s; settle local|remote [field]", c.Key, describeConflict(c))
			}
		}
		announced = now
	}
	defer r.Subscribe("cart/", func(c client.Change) {
		if c.Remote {
			say("~ from another device: %s", describe(c.Key, c.Value))
		}
		select {
		case wake <- struct{}{}:
		default:
		}
	})()
	actx, stopAnnounce := context.WithCancel(ctx)
	defer stopAnnounce()
	go func() {
		for {
			select {
			case <-actx.Done():
				return
			case <-wake:
				announce()
			}
		}
	}()
	wake <- struct{}{} // conflicts left from an earlier run
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
			say("add ITEM | rm ITEM | note TEXT | deliver DAY | show | status | conflicts | settle local|remote [FIELD] | sync | quit")
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
			lastErr := "none"
			if st.LastError != nil {
				lastErr = fmt.Sprintf("%s (%s)", st.LastError.Message, st.LastError.Kind)
			}
			say("status: %s, %d pending writes in %d batches, %d conflicts, version %d, last error: %s", online, st.PendingOps, st.Pending, st.Conflicts, st.Version, lastErr)
		case "conflicts":
			cs, err2 := r.Conflicts()
			err = err2
			for _, c := range cs {
				say("conflict on %s: %s", c.Key, describeConflict(c))
			}
			if err == nil && len(cs) == 0 {
				say("no conflicts")
			}
		case "settle":
			err = settle(r, arg)
		case "sync":
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = r.WaitSynced(sctx)
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

// settle ends the conflicts on the cart with this device's side or the
// other's, for one field or for every conflicting one.
func settle(r *client.Replica, arg string) error {
	sideName, field, one := strings.Cut(arg, " ")
	side := map[string]client.Side{"local": client.KeepLocal, "remote": client.KeepRemote}[sideName]
	if side == 0 {
		return errors.New("settle local|remote [FIELD]")
	}
	cs, err := r.Conflicts()
	if err != nil {
		return err
	}
	if len(cs) == 0 {
		return errors.New("no conflicts to settle")
	}
	for _, c := range cs {
		sides := make(map[string]client.Side)
		for _, f := range c.Fields {
			if !one || f.Path == strings.TrimSpace(field) {
				sides[f.Path] = side
			}
		}
		if len(sides) == 0 {
			continue
		}
		return r.SettleFields(c.Key, sides)
	}
	return fmt.Errorf("no conflicting field %q", field)
}

// describeConflict shows each conflicting field's two sides.
func describeConflict(c client.Conflict) string {
	var parts []string
	for _, f := range c.Fields {
		name := f.Path
		if name == "" {
			name = "the whole value"
		}
		parts = append(parts, fmt.Sprintf("%s: mine %s, theirs %s", name, shown(f.Local), shown(f.Remote)))
	}
	return strings.Join(parts, "; ")
}

func shown(v *client.Value) string {
	if v == nil {
		return "(none)"
	}
	return string(v.GetScalar())
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

// tokenSource gives device tokens for user: DALV_TOKEN as it is (refused
// when it is for someone else), or, for development, tokens minted with
// DALV_JWT_SECRET or with the secret `dalv serve --dev` keeps in its data
// directory. A real application asks its login service instead.
func tokenSource(user, dataDir string) (func(context.Context) (string, error), error) {
	if tok := os.Getenv("DALV_TOKEN"); tok != "" {
		sub, err := tokenSubject(tok)
		if err != nil {
			return nil, fmt.Errorf("DALV_TOKEN: %w", err)
		}
		if sub != user {
			return nil, fmt.Errorf("DALV_TOKEN is a token for user %q, not for %q: run with -user %s, or mint one with `dalv token --user %s`", sub, user, sub, user)
		}
		return func(context.Context) (string, error) { return tok, nil }, nil
	}
	secret := os.Getenv("DALV_JWT_SECRET")
	if secret == "" {
		kept, err := devsecret.Load(dataDir)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("no development secrets in %s: run the cart in the directory where `dalv serve --dev` runs (or name its data directory with -data), or set DALV_JWT_SECRET or DALV_TOKEN", dataDir)
			}
			return nil, err
		}
		secret = kept.JWTSecret
	}
	return func(context.Context) (string, error) {
		return auth.Mint([]byte(secret), user, time.Hour, time.Now())
	}, nil
}

// tokenSubject reads a JWT's subject without verifying it: the server
// verifies; this only catches a token meant for another user.
func tokenSubject(tok string) (string, error) {
	var claims jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(tok, &claims); err != nil {
		return "", fmt.Errorf("not a JWT: %w", err)
	}
	if claims.Subject == "" {
		return "", errors.New("the token names no user (no sub claim)")
	}
	return claims.Subject, nil
}
