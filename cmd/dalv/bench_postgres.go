package main

import (
	"context"
	"errors"

	"github.com/spf13/cobra"

	"github.com/dalvdb/dalv/bench"
)

// runPostgresBench is `dalv bench --store postgres://...`: closed-loop
// device syncs over 1 and then 3 nodes on that database, beside pgbench's
// rate for a comparable single-row transaction with as many clients
// (--devices, default 32 here), and commit-to-watcher latency across nodes.
// --runs, --duration, --warmup, --value-bytes, --server-args and --json
// apply.
func runPostgresBench(ctx context.Context, cmd *cobra.Command, cfg bench.Config, store string, asJSON bool) error {
	if cfg.URL != "" {
		return errors.New("--store starts its own nodes: leave out --url")
	}
	pc := bench.PostgresConfig{
		Binary:      cfg.Binary,
		Store:       store,
		Duration:    cfg.Duration,
		ValueBytes:  cfg.ValueBytes,
		Keys:        cfg.Keys,
		Client:      cfg.Client,
		ServerArgs:  cfg.ServerArgs,
		Progress:    cfg.Progress,
		ClientProcs: bench.ClientProcs(),
	}
	if fl := cmd.Flags(); fl.Changed("devices") {
		pc.Devices = cfg.Devices
	}
	if cmd.Flags().Changed("runs") {
		pc.Runs = cfg.Runs
	}
	if cmd.Flags().Changed("warmup") {
		pc.Warmup = cfg.Warmup
	}
	rep, err := bench.RunPostgres(ctx, pc)
	if err != nil {
		return err
	}
	if asJSON {
		return rep.WriteJSON(cmd.OutOrStdout())
	}
	return rep.WriteTable(cmd.OutOrStdout())
}
