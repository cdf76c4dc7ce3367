package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
)

func newWatchCmd() *cobra.Command {
	var (
		o        opsFlags
		prefixes []string
		cursor   string
	)
	cmd := &cobra.Command{
		Use:   "watch [--prefix P]... [--cursor C]",
		Short: "Follow the backend change feed, one line per commit; resumes after reconnects",
		Long: `Follow the change feed across all partitions. Each line is one commit:
its cursor, partition, version and ops. With no --cursor it starts from now;
--cursor start starts from the oldest retained commit; any printed cursor
resumes right after that commit. On a lost connection or a server restart it
reconnects from the last cursor by itself.

With --json each line is {"cursor", "user" or "shared", "version",
"erased", "ops": [{"kind", "key", "value"}]}. ` + valueHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			backoff := 100 * time.Millisecond
			for {
				got, err := followFeed(cmd.Context(), c.Watch, &dalvv1.BackendServiceWatchRequest{Prefixes: prefixes, Cursor: cursor}, func(ev *dalvv1.ChangeEvent) error {
					cursor = ev.GetCursor()
					if ev.GetHeartbeat() {
						return nil
					}
					if o.json {
						return writeJSON(out, toJSONEvent(ev))
					}
					_, err := fmt.Fprintln(out, formatEvent(ev))
					return err
				})
				if cmd.Context().Err() != nil {
					return nil
				}
				if !retryable(err) {
					return err
				}
				if got {
					backoff = 100 * time.Millisecond
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "dalv watch: %v; reconnecting from cursor %q in %v\n", err, cursor, backoff)
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(backoff + rand.N(backoff/2)):
				}
				backoff = min(2*backoff, 5*time.Second)
			}
		},
	}
	o.register(cmd, false)
	cmd.Flags().StringArrayVar(&prefixes, "prefix", nil, "only commits with keys under this prefix (repeatable)")
	cmd.Flags().StringVar(&cursor, "cursor", "", `resume after this cursor; "start" for the oldest retained commit`)
	return cmd
}

// followFeed reads one feed stream until it ends, handing each event to fn.
// It reports whether any event arrived, and why the stream ended.
func followFeed(ctx context.Context, watch func(context.Context, *connect.Request[dalvv1.BackendServiceWatchRequest]) (*connect.ServerStreamForClient[dalvv1.ChangeEvent], error), req *dalvv1.BackendServiceWatchRequest, fn func(*dalvv1.ChangeEvent) error) (bool, error) {
	stream, err := watch(ctx, connect.NewRequest(req))
	if err != nil {
		return false, err
	}
	defer stream.Close()
	got := false
	for stream.Receive() {
		got = true
		if err := fn(stream.Msg()); err != nil {
			return got, err
		}
	}
	if err := stream.Err(); err != nil {
		return got, err
	}
	return got, io.ErrUnexpectedEOF // the server ended the stream without a reason
}

// retryable reports whether a feed error is worth reconnecting after: the
// server went away or restarts, not a refusal of the request itself.
func retryable(err error) bool {
	if err == nil || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeUnknown, connect.CodeInternal, connect.CodeDeadlineExceeded, connect.CodeAborted:
		return true
	case connect.CodeResourceExhausted:
		return strings.Contains(err.Error(), "too slow")
	}
	return false
}

func formatEvent(ev *dalvv1.ChangeEvent) string {
	part := "user:" + ev.GetUser()
	if ev.GetShared() != "" {
		part = "shared:" + ev.GetShared()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s v%d", ev.GetCursor(), part, ev.GetVersion())
	if ev.GetErased() {
		b.WriteString(" ERASED")
	}
	for _, op := range ev.GetOps() {
		kind := strings.TrimPrefix(op.GetKind().String(), "OP_KIND_")
		if op.GetKind() == dalvv1.OpKind_OP_KIND_DELETE {
			fmt.Fprintf(&b, " %s %s", kind, op.GetKey())
			continue
		}
		fmt.Fprintf(&b, " %s %s=%s", kind, op.GetKey(), valueText(op.GetValue()))
	}
	return b.String()
}
