package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/dalvdb/dalv/auth"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/value"
)

// opsFlags are the flags every operator command shares.
type opsFlags struct {
	addr, key, shared string
	data, caFile      string
	json              bool
	timeout           time.Duration
}

func (o *opsFlags) register(cmd *cobra.Command, partition bool) {
	fl := cmd.Flags()
	fl.StringVar(&o.addr, "addr", "", "server URL, http:// or https:// (default $DALV_ADDR, else http://127.0.0.1:7070)")
	fl.StringVar(&o.key, "key", "", "backend API key (default $DALV_BACKEND_KEY, else the one dalv serve --dev keeps in --data)")
	dataFlag(cmd, &o.data)
	fl.StringVar(&o.caFile, "ca-file", "", caFileHelp)
	fl.BoolVar(&o.json, "json", false, "print JSON for programs instead of a table")
	fl.DurationVar(&o.timeout, "timeout", 30*time.Second, "deadline of each request")
	if partition {
		fl.StringVar(&o.shared, "shared", "", "act on this shared partition instead of a USER")
	}
}

// client builds the backend client from flags and environment.
func (o *opsFlags) client() (dalvv1connect.BackendServiceClient, error) {
	addr := o.addr
	if addr == "" {
		addr = os.Getenv("DALV_ADDR")
	}
	if addr == "" {
		addr = "http://127.0.0.1:7070"
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	key := o.key
	if key == "" {
		key = os.Getenv("DALV_BACKEND_KEY")
	}
	if key == "" {
		var err error
		if key, err = devBackendKey(o.data); err != nil {
			return nil, err
		}
	}
	hc, err := httpClient(o.caFile)
	if err != nil {
		return nil, err
	}
	// The key goes on every request, unary and streaming alike.
	hc = &http.Client{Transport: auth.Bearer(key, hc.Transport)}
	return dalvv1connect.NewBackendServiceClient(hc, strings.TrimRight(addr, "/")), nil
}

// partition takes USER from args unless --shared names the partition; it
// returns the user, the shared name and the remaining args.
func (o *opsFlags) partition(args []string) (user, shared string, rest []string, err error) {
	if o.shared != "" {
		return "", o.shared, args, nil
	}
	if len(args) == 0 {
		return "", "", nil, errors.New("missing USER (or pass --shared NAME)")
	}
	return args[0], "", args[1:], nil
}

func (o *opsFlags) ctx(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, o.timeout)
}

// printJSON writes m as one line of JSON, as the server's JSON answers
// are: protojson without whitespace.
func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{UseProtoNames: false}.Marshal(m)
	if err != nil {
		return err
	}
	return writeJSON(w, json.RawMessage(b))
}

func printChanges(w io.Writer, items []*dalvv1.Change) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tVERSION\tVALUE")
	for _, c := range items {
		fmt.Fprintf(tw, "%s\t%d\t%s\n", c.GetKey(), c.GetVersion(), valueText(c.GetValue()))
	}
	return tw.Flush()
}

func newGetCmd() *cobra.Command {
	var o opsFlags
	cmd := &cobra.Command{
		Use:   "get USER KEY... | get --shared NAME KEY...",
		Short: "Read keys of a partition through the backend API",
		Long:  "Read keys of a partition through the backend API.\n\n" + valueHelp,
		RunE: func(cmd *cobra.Command, args []string) error {
			user, shared, keys, err := o.partition(args)
			if err != nil {
				return err
			}
			if len(keys) == 0 {
				return errors.New("missing KEY: name at least one key to read")
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			ctx, cancel := o.ctx(cmd.Context())
			defer cancel()
			resp, err := c.Get(ctx, connect.NewRequest(&dalvv1.GetRequest{User: user, Shared: shared, Keys: keys}))
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if o.json {
				err = writeJSON(out, jsonRead{Version: resp.Msg.GetVersion(), Items: toJSONChanges(resp.Msg.GetItems())})
			} else {
				err = printChanges(out, resp.Msg.GetItems())
			}
			if err != nil {
				return err
			}
			found := make(map[string]bool)
			for _, it := range resp.Msg.GetItems() {
				found[it.GetKey()] = true
			}
			var missing []string
			for _, k := range keys {
				if !found[k] {
					missing = append(missing, k)
				}
			}
			if len(missing) > 0 {
				return fmt.Errorf("not found: %s", strings.Join(missing, ", "))
			}
			return nil
		},
	}
	o.register(cmd, true)
	return cmd
}

func newListCmd() *cobra.Command {
	var (
		o     opsFlags
		limit int
	)
	cmd := &cobra.Command{
		Use:   "list USER [PREFIX] | list --shared NAME [PREFIX]",
		Short: "List the keys of a partition under a prefix",
		Long:  "List the keys of a partition under a prefix, every page.\n\n" + valueHelp,
		RunE: func(cmd *cobra.Command, args []string) error {
			user, shared, rest, err := o.partition(args)
			if err != nil {
				return err
			}
			if len(rest) > 1 {
				return fmt.Errorf("too many arguments: want at most one PREFIX, got %q", rest)
			}
			prefix := ""
			if len(rest) == 1 {
				prefix = rest[0]
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			var (
				all     []*dalvv1.Change
				token   string
				version uint64
			)
			for {
				ctx, cancel := o.ctx(cmd.Context())
				resp, err := c.List(ctx, connect.NewRequest(&dalvv1.ListRequest{User: user, Shared: shared, Prefix: prefix, PageToken: token, PageSize: 1000}))
				cancel()
				if err != nil {
					return err
				}
				all = append(all, resp.Msg.GetItems()...)
				version = resp.Msg.GetVersion()
				token = resp.Msg.GetNextPageToken()
				if token == "" || (limit > 0 && len(all) >= limit) {
					break
				}
			}
			if limit > 0 && len(all) > limit {
				all = all[:limit]
			}
			if o.json {
				return writeJSON(cmd.OutOrStdout(), jsonRead{Version: version, Items: toJSONChanges(all)})
			}
			return printChanges(cmd.OutOrStdout(), all)
		},
	}
	o.register(cmd, true)
	cmd.Flags().IntVar(&limit, "limit", 0, "stop after this many keys (0: all)")
	return cmd
}

func newPutCmd() *cobra.Command {
	var (
		o                     opsFlags
		del, listAdd, listRem bool
		raw                   bool
		expect                int64
		idemKey               string
	)
	cmd := &cobra.Command{
		Use:   "put USER KEY [VALUE] | put --shared NAME KEY [VALUE]",
		Short: "Commit one op to a partition: PUT (default), --delete, --list-add or --list-remove",
		Long: `Commit one op to a partition: PUT (default), --delete, --list-add or
--list-remove.

VALUE is JSON, as devices store it: 42, true, '{"a":1}', '"two words"'. A
bare word that is not JSON is stored as a JSON string: light is stored as
"light". Text that starts like JSON but is not ('{"a":', '3 apples') is
refused. --raw stores VALUE's bytes exactly as given instead; get, list and
watch then show them as base64:... unless they happen to be JSON.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			user, shared, rest, err := o.partition(args)
			if err != nil {
				return err
			}
			n := 0
			for _, b := range []bool{del, listAdd, listRem} {
				if b {
					n++
				}
			}
			if n > 1 {
				return errors.New("choose one of --delete, --list-add and --list-remove")
			}
			op := &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_PUT}
			switch {
			case del:
				if len(rest) != 1 {
					return fmt.Errorf("put --delete takes KEY only, got %d arguments", len(rest))
				}
				op.Kind = dalvv1.OpKind_OP_KIND_DELETE
			case len(rest) != 2:
				return fmt.Errorf("want KEY and VALUE, got %d arguments", len(rest))
			case listAdd:
				op.Kind = dalvv1.OpKind_OP_KIND_LIST_ADD
			case listRem:
				op.Kind = dalvv1.OpKind_OP_KIND_LIST_REMOVE
			}
			op.Key = rest[0]
			if !del {
				b, err := encodeArg(rest[1], raw)
				if err != nil {
					return err
				}
				op.Value = value.Scalar(b)
			}
			req := &dalvv1.CommitRequest{User: user, Shared: shared, Ops: []*dalvv1.Op{op}, IdempotencyKey: idemKey}
			if cmd.Flags().Changed("expect-version") {
				if expect < 0 {
					return fmt.Errorf("--expect-version %d is negative", expect)
				}
				v := uint64(expect)
				req.ExpectedVersion = &v
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			ctx, cancel := o.ctx(cmd.Context())
			defer cancel()
			resp, err := commitOnce(ctx, c, req)
			if err != nil {
				return err
			}
			if o.json {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "committed version %d\n", resp.GetVersion())
			return err
		},
	}
	o.register(cmd, true)
	fl := cmd.Flags()
	fl.BoolVar(&del, "delete", false, "delete KEY")
	fl.BoolVar(&listAdd, "list-add", false, "add VALUE to the list at KEY")
	fl.BoolVar(&listRem, "list-remove", false, "remove VALUE from the list at KEY")
	fl.BoolVar(&raw, "raw", false, "store VALUE's bytes as given instead of as JSON")
	fl.Int64Var(&expect, "expect-version", 0, "commit only if the partition is at this version")
	fl.StringVar(&idemKey, "idempotency-key", "", "the commit's idempotency key, to rerun a put that may have applied (default: a random one; retries reuse it)")
	return cmd
}

// eraseResult is erase's --json output: Erased is false when the
// partition never had data, and Version then 0.
type eraseResult struct {
	Version uint64 `json:"version,string"`
	Erased  bool   `json:"erased"`
}

func newEraseCmd() *cobra.Command {
	var (
		o   opsFlags
		yes bool
	)
	cmd := &cobra.Command{
		Use:   "erase USER | erase --shared NAME",
		Short: "Erase all data of a partition (asks first unless --yes)",
		Long: `Erase all data of a partition: its keys, their history and its feed
records; devices get a reset. It asks first unless --yes. A partition that
never had data is left alone ("nothing to erase"). With --json it prints
{"version": "N", "erased": true|false}.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			user, shared, rest, err := o.partition(args)
			if err != nil {
				return err
			}
			if len(rest) > 0 {
				return fmt.Errorf("too many arguments: %q", rest)
			}
			name := user
			if shared != "" {
				name = shared
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			// A partition that never had a commit has nothing to erase;
			// one with no keys may still hold history and tombstones
			// (deleted keys and their past values in the feed), which the
			// erase removes.
			ctx, cancel := o.ctx(cmd.Context())
			before, err := c.List(ctx, connect.NewRequest(&dalvv1.ListRequest{User: user, Shared: shared, PageSize: 1}))
			cancel()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if before.Msg.GetVersion() == 0 {
				if o.json {
					return writeJSON(out, eraseResult{})
				}
				_, err = fmt.Fprintf(out, "nothing to erase: %q has no data\n", name)
				return err
			}
			if !yes {
				fmt.Fprintf(cmd.ErrOrStderr(), "Erase every key of %q? Devices will get a reset. Type the name to confirm: ", name)
				line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
				if err != nil && (line == "" || !errors.Is(err, io.EOF)) {
					return errors.New("not confirmed (no answer); pass --yes to erase without asking")
				}
				if strings.TrimSpace(line) != name {
					return errors.New("not confirmed; nothing erased")
				}
			}
			ctx, cancel = o.ctx(cmd.Context()) // the answer may have taken a while
			defer cancel()
			resp, err := c.DeletePartition(ctx, connect.NewRequest(&dalvv1.DeletePartitionRequest{User: user, Shared: shared}))
			if err != nil {
				return err
			}
			if o.json {
				return writeJSON(out, eraseResult{Version: resp.Msg.GetVersion(), Erased: true})
			}
			if len(before.Msg.GetItems()) == 0 {
				_, err = fmt.Fprintf(out, "erased %q at version %d: it held no keys, only the history of deleted ones\n", name, resp.Msg.GetVersion())
				return err
			}
			_, err = fmt.Fprintf(out, "erased %q at version %d\n", name, resp.Msg.GetVersion())
			return err
		},
	}
	o.register(cmd, true)
	cmd.Flags().BoolVar(&yes, "yes", false, "do not ask for confirmation")
	return cmd
}
