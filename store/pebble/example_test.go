package pebble_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/dalvdb/dalv/store"
	"github.com/dalvdb/dalv/store/pebble"
)

func Example() {
	dir, err := os.MkdirTemp("", "dalv")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	s, err := pebble.Open(dir, pebble.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	ctx := context.Background()
	alice := store.Partition{Name: "alice"}
	// One commit: the next version, its entries, the device batch applied.
	err = s.Update(ctx, alice, func(r store.Reader) (*store.Commit, error) {
		h, err := r.Head()
		if err != nil {
			return nil, err
		}
		v := h.Version + 1
		return &store.Commit{
			Version: v,
			Time:    time.Now(),
			Entries: []store.Entry{{Key: "prefs/theme", Value: []byte("dark"), Version: v, ScalarVersion: v}},
			Device:  "phone", Batch: 1,
		}, nil
	})
	if err != nil {
		log.Fatal(err)
	}

	err = s.View(ctx, alice, func(r store.Reader) error {
		h, err := r.Head()
		if err != nil {
			return err
		}
		fmt.Println("version", h.Version)
		return r.Changes(0, func(e store.Entry) (bool, error) {
			fmt.Printf("%s = %s (version %d)\n", e.Key, e.Value, e.Version)
			return true, nil
		})
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// version 1
	// prefs/theme = dark (version 1)
}
