package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/devsecret"
	"github.com/dalvdb/dalv/value"
)

// The keys of the shop. Devices write the first group; only the backend
// writes the system domain (sys/) and the shared catalog.
const (
	prefsPrefix    = "prefs/"
	cartItemsKey   = "cart/items"
	cartQtyPrefix  = "cart/qty/"
	checkoutKey    = "checkout/requests"
	followingKey   = "following"
	postsPrefix    = "posts/"
	ordersPrefix   = "sys/orders/"
	followersKey   = "sys/followers"
	timelinePrefix = "sys/timeline/"
	catalog        = "catalog"
)

// feedPrefixes are the keys whose changes the backend reacts to.
var feedPrefixes = []string{checkoutKey, followingKey, postsPrefix}

// Order is what the backend writes under a buyer's sys/orders/ when it
// takes a checkout request.
type Order struct {
	ID     string      `json:"id"`
	Items  []OrderItem `json:"items"`
	Placed time.Time   `json:"placed"`
}

// OrderItem is one product of an order.
type OrderItem struct {
	Product string `json:"product"`
	Qty     int    `json:"qty"`
}

// Post is what a device writes under posts/; the backend copies it, with
// its author, to each follower's sys/timeline/.
type Post struct {
	Author string `json:"author,omitempty"`
	Text   string `json:"text"`
	At     int64  `json:"at"`
}

// Backend is the shop's backend service. It follows the change feed from a
// cursor kept in a file, so that a restart resumes where it stopped, and
// turns what devices write into what only a backend may write: a checkout
// request into an order, a follow into the followee's followers, a post
// into the followers' timelines. Every reaction is idempotent, so an event
// handled again after a restart changes nothing more.
type Backend struct {
	// Client speaks to the DalvDB server with a backend key.
	Client dalvv1connect.BackendServiceClient
	// CursorFile keeps the feed's cursor; it is created on first use.
	CursorFile string
	// Log receives what the backend does; nil discards it.
	Log *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Run seeds the catalog when it is empty, then follows the feed until ctx
// ends, reconnecting after a failure.
func (b *Backend) Run(ctx context.Context) error {
	if err := b.Seed(ctx); err != nil {
		return err
	}
	for {
		err := b.follow(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		b.log().Warn("feed interrupted; resuming from the kept cursor", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Seed writes the catalog when the shared partition is still empty: the
// commit expects version 0, so a second backend (or a restart) seeds nothing.
func (b *Backend) Seed(ctx context.Context) error {
	ops, err := catalogOps()
	if err != nil {
		return err
	}
	zero := uint64(0)
	_, err = b.Client.Commit(ctx, connect.NewRequest(&dalvv1.CommitRequest{Shared: catalog, Ops: ops, ExpectedVersion: &zero}))
	if connect.CodeOf(err) == connect.CodeFailedPrecondition {
		return nil
	}
	if err != nil {
		return fmt.Errorf("seed the catalog: %w", err)
	}
	b.log().Info("catalog seeded", "keys", len(ops))
	return nil
}

// follow reads the feed from the kept cursor, handling each commit before
// keeping the cursor after it.
func (b *Backend) follow(ctx context.Context) error {
	cursor, err := b.cursor()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := b.Client.Watch(ctx, connect.NewRequest(&dalvv1.BackendServiceWatchRequest{Prefixes: feedPrefixes, Cursor: cursor}))
	if err != nil {
		return err
	}
	defer stream.Close()
	for stream.Receive() {
		ev := stream.Msg()
		if !ev.Heartbeat && ev.User != "" && !ev.Erased {
			if err := b.handle(ctx, ev); err != nil {
				return fmt.Errorf("user %q version %d: %w", ev.User, ev.Version, err)
			}
		}
		if err := b.keepCursor(ev.Cursor); err != nil {
			return err
		}
	}
	if err := stream.Err(); err != nil {
		return err
	}
	return errors.New("the server ended the feed")
}

// handle reacts to one commit of a user's partition.
func (b *Backend) handle(ctx context.Context, ev *dalvv1.ChangeEvent) error {
	checkout := false
	for _, op := range ev.Ops {
		switch {
		case op.Key == checkoutKey:
			checkout = true
		case op.Key == followingKey:
			if err := b.follow1(ctx, ev.User, op); err != nil {
				return err
			}
		case strings.HasPrefix(op.Key, postsPrefix) && op.Kind == dalvv1.OpKind_OP_KIND_PUT:
			if err := b.fanOut(ctx, ev.User, strings.TrimPrefix(op.Key, postsPrefix), op.Value); err != nil {
				return err
			}
		}
	}
	if checkout {
		return b.checkout(ctx, ev.User)
	}
	return nil
}

// follow1 mirrors one change of user's following list in the followee's
// followers: list ops, so that handling it twice changes nothing.
func (b *Backend) follow1(ctx context.Context, user string, op *dalvv1.Op) error {
	kind := op.Kind
	if kind != dalvv1.OpKind_OP_KIND_LIST_ADD && kind != dalvv1.OpKind_OP_KIND_LIST_REMOVE {
		b.log().Warn("following is a list: ignoring an op that is not a list op", "user", user, "kind", kind)
		return nil
	}
	followee := string(op.GetValue().GetScalar())
	if followee == "" || followee == user {
		return nil
	}
	_, err := b.Client.Commit(ctx, connect.NewRequest(&dalvv1.CommitRequest{User: followee, Ops: []*dalvv1.Op{
		{Kind: kind, Key: followersKey, Value: value.Scalar([]byte(user))},
	}}))
	if err == nil {
		b.log().Info("followers updated", "followee", followee, "follower", user, "op", kind)
	}
	return err
}

// fanOut copies user's post id to the timeline of each of user's followers.
func (b *Backend) fanOut(ctx context.Context, user, id string, v *dalvv1.Value) error {
	var p Post
	if err := value.UnmarshalJSON(v, &p); err != nil {
		b.log().Warn("ignoring a post that is not JSON", "user", user, "id", id, "err", err)
		return nil
	}
	p.Author = user
	tv, err := value.JSON(p)
	if err != nil {
		return err
	}
	got, err := b.Client.Get(ctx, connect.NewRequest(&dalvv1.GetRequest{User: user, Keys: []string{followersKey}}))
	if err != nil {
		return err
	}
	var followers [][]byte
	for _, it := range got.Msg.Items {
		followers = it.GetValue().GetList().GetItems()
	}
	for _, f := range followers {
		// A PUT of the same value: handling the post again changes nothing.
		_, err := b.Client.Commit(ctx, connect.NewRequest(&dalvv1.CommitRequest{User: string(f), Ops: []*dalvv1.Op{
			{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: timelinePrefix + id, Value: tv},
		}}))
		if err != nil {
			return err
		}
	}
	b.log().Info("post fanned out", "author", user, "id", id, "followers", len(followers))
	return nil
}

// checkout takes each of user's checkout requests in turn: one commit,
// expecting the version it read, writes the order, empties the cart and
// removes the request. A stale version (the device changed the cart
// meanwhile) reads again; a request already taken is no longer in the list,
// so a request becomes one order however often its event is handled.
func (b *Backend) checkout(ctx context.Context, user string) error {
	for {
		got, err := b.Client.Get(ctx, connect.NewRequest(&dalvv1.GetRequest{User: user, Keys: []string{checkoutKey, cartItemsKey}}))
		if err != nil {
			return err
		}
		var requests, items [][]byte
		for _, it := range got.Msg.Items {
			switch it.Key {
			case checkoutKey:
				requests = it.GetValue().GetList().GetItems()
			case cartItemsKey:
				items = it.GetValue().GetList().GetItems()
			}
		}
		if len(requests) == 0 {
			return nil
		}
		id := string(requests[0])
		qty, err := b.quantities(ctx, user)
		if err != nil {
			return err
		}
		order := Order{ID: id, Placed: b.now().UTC()}
		ops := []*dalvv1.Op{{Kind: dalvv1.OpKind_OP_KIND_LIST_REMOVE, Key: checkoutKey, Value: value.Scalar([]byte(id))}}
		if len(items) > 0 {
			for _, it := range items {
				n := qty[string(it)]
				if n < 1 {
					n = 1
				}
				order.Items = append(order.Items, OrderItem{Product: string(it), Qty: n})
			}
			ov, err := value.JSON(order)
			if err != nil {
				return err
			}
			ops = append(ops,
				&dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: ordersPrefix + id, Value: ov},
				&dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_DELETE, Key: cartItemsKey})
		}
		for p := range qty {
			ops = append(ops, &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_DELETE, Key: cartQtyPrefix + p})
		}
		at := got.Msg.Version
		_, err = b.Client.Commit(ctx, connect.NewRequest(&dalvv1.CommitRequest{User: user, Ops: ops, ExpectedVersion: &at}))
		if connect.CodeOf(err) == connect.CodeFailedPrecondition {
			continue // the partition moved on: read it again
		}
		if err != nil {
			return err
		}
		b.log().Info("order placed", "user", user, "order", id, "items", len(order.Items))
	}
}

// quantities reads user's cart/qty/ keys: product → quantity.
func (b *Backend) quantities(ctx context.Context, user string) (map[string]int, error) {
	qty := make(map[string]int)
	token := ""
	for {
		resp, err := b.Client.List(ctx, connect.NewRequest(&dalvv1.ListRequest{User: user, Prefix: cartQtyPrefix, PageToken: token}))
		if err != nil {
			return nil, err
		}
		for _, it := range resp.Msg.Items {
			var n int
			if err := value.UnmarshalJSON(it.GetValue(), &n); err != nil {
				n = 1 // a quantity the page did not write as a number counts as one
			}
			qty[strings.TrimPrefix(it.Key, cartQtyPrefix)] = n
		}
		if token = resp.Msg.NextPageToken; token == "" {
			return qty, nil
		}
	}
}

// cursor returns the kept cursor, or "start" (the oldest retained commit)
// before the first.
func (b *Backend) cursor() (string, error) {
	c, err := os.ReadFile(b.CursorFile)
	if errors.Is(err, os.ErrNotExist) {
		return "start", nil
	}
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(c)), nil
}

// keepCursor replaces the cursor file at once and durably.
func (b *Backend) keepCursor(c string) error {
	return devsecret.WriteFile(filepath.Dir(b.CursorFile), filepath.Base(b.CursorFile), []byte(c+"\n"))
}

func (b *Backend) log() *slog.Logger {
	if b.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return b.Log
}

func (b *Backend) now() time.Time {
	if b.Now == nil {
		return time.Now()
	}
	return b.Now()
}

// catalogOps are the seed catalog: categories under cat/ (a tree, by
// parent) and products under product/, JSON.
func catalogOps() ([]*dalvv1.Op, error) {
	type category struct {
		Name   string `json:"name"`
		Parent string `json:"parent,omitempty"`
	}
	type product struct {
		Name  string  `json:"name"`
		Price float64 `json:"price"`
		Cat   string  `json:"cat"`
	}
	entries := []struct {
		key string
		v   any
	}{
		{"cat/kitchen", category{Name: "Kitchen"}},
		{"cat/mugs", category{Name: "Mugs", Parent: "kitchen"}},
		{"cat/books", category{Name: "Books"}},
		{"cat/outdoor", category{Name: "Outdoor"}},
		{"product/mug-blue", product{Name: "Blue mug", Price: 9.5, Cat: "mugs"}},
		{"product/mug-red", product{Name: "Red mug", Price: 9.5, Cat: "mugs"}},
		{"product/teapot", product{Name: "Teapot", Price: 24, Cat: "kitchen"}},
		{"product/novel", product{Name: "A novel", Price: 12, Cat: "books"}},
		{"product/atlas", product{Name: "World atlas", Price: 30, Cat: "books"}},
		{"product/tent", product{Name: "Two-person tent", Price: 120, Cat: "outdoor"}},
	}
	ops := make([]*dalvv1.Op, 0, len(entries))
	for _, e := range entries {
		v, err := value.JSON(e.v)
		if err != nil {
			return nil, err
		}
		ops = append(ops, &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: e.key, Value: v})
	}
	return ops, nil
}
