// Command goreplica drives a Go SDK replica for the browser SDK's
// convergence test: it opens the replica file, runs its commands in order
// and prints the replica's state as JSON.
//
//	goreplica FILE SERVER_URL TOKEN COMMAND...
//
// Commands: put KEY TEXT, listadd KEY ITEM, listremove KEY ITEM,
// mergejson (use MergeJSON as the resolver from then on), sync, dump.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/dalvdb/dalv/client"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "goreplica:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 3 {
		return errors.New("usage: goreplica FILE SERVER_URL TOKEN COMMAND…")
	}
	file, url, tok := args[0], args[1], args[2]
	var resolver client.Resolver = client.ClientWins
	r, err := client.Open(file, client.Options{
		ServerURL:   url,
		TokenSource: func(context.Context) (string, error) { return tok, nil },
		Resolver:    func(c client.Conflict) client.Resolution { return resolver(c) },
	})
	if err != nil {
		return err
	}
	defer r.Close()
	cmds := args[3:]
	for len(cmds) > 0 {
		var err error
		switch cmds[0] {
		case "put":
			err = r.Put(cmds[1], []byte(cmds[2]))
			cmds = cmds[3:]
		case "listadd":
			err = r.ListAdd(cmds[1], []byte(cmds[2]))
			cmds = cmds[3:]
		case "listremove":
			err = r.ListRemove(cmds[1], []byte(cmds[2]))
			cmds = cmds[3:]
		case "mergejson":
			resolver = client.MergeJSON
			cmds = cmds[1:]
		case "sync":
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			err = r.Sync(ctx)
			cancel()
			cmds = cmds[1:]
		case "dump":
			items, lerr := r.List("")
			if lerr != nil {
				return lerr
			}
			out := make(map[string]any)
			for _, it := range items {
				if l := it.Value.GetList(); l != nil {
					s := []string{}
					for _, x := range l.GetItems() {
						s = append(s, string(x))
					}
					out[it.Key] = s
				} else {
					out[it.Key] = string(it.Value.GetScalar())
				}
			}
			b, _ := json.Marshal(out)
			fmt.Println(string(b))
			cmds = cmds[1:]
		default:
			return fmt.Errorf("unknown command %q", cmds[0])
		}
		if err != nil {
			return err
		}
	}
	return nil
}
