package bench

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
)

// PostgresReport is what [RunPostgres] measured: medians over the runs.
type PostgresReport struct {
	Server  string `json:"server"`
	Devices int    `json:"devices"`
	// Keys is how many keys each device cycles its PUTs over.
	Keys     int    `json:"keys"`
	Runs     int    `json:"runs"`
	Duration string `json:"duration"`
	// Warmup is the unmeasured load before each measurement.
	Warmup string `json:"warmup"`
	// Pgbench is pgbench's rate and latency for its transaction; Script
	// is that transaction.
	Pgbench PgRate `json:"pgbench"`
	Script  string `json:"pgbench_script"`
	// Commit is pgbench running DalvDB's commit of one PUT to a partition
	// a node holds, as one statement (the writes a node's grouped statement
	// makes for each commit in it), with as many clients: what PostgreSQL
	// does with no node in the way. CommitScript is that statement.
	Commit PgRate `json:"pgbench_dalv_commit"`
	// PgbenchCPU and CommitCPU split the CPU per transaction of the two
	// pgbench scripts (whole runs, warm-up included).
	PgbenchCPU PgCPU `json:"pgbench_cpu"`
	CommitCPU  PgCPU `json:"pgbench_dalv_commit_cpu"`
	// CommitRatio is Commit's rate over Pgbench's, as Ratio is.
	CommitRatio  float64 `json:"pgbench_dalv_commit_ratio"`
	CommitScript string  `json:"pgbench_dalv_commit_script"`
	// Nodes has one entry per node count measured.
	Nodes []PgNodes `json:"nodes"`
	// Target is the least share of pgbench's rate three nodes must reach:
	// TargetPgbenchRatio, or TargetCitusRatio on Citus.
	Target float64 `json:"target_ratio"`
	// RunTarget is the least share every run of three nodes must reach:
	// TargetPgbenchRunRatio, or 0 on Citus, which sets none.
	RunTarget float64 `json:"target_run_ratio,omitempty"`
	// TwoPhase, on Citus, counts the two-phase commits (rows added to
	// pg_dist_transaction) during each measurement, summed over the runs,
	// by row: "pgbench", "commit", "1 node", "3 nodes"; -1 where they
	// could not be counted (Citus recovers them in the background unless
	// citus.recover_2pc_interval is -1). Any in the nodes' rows, or none
	// counted, fails Pass.
	TwoPhase map[string]int `json:"two_phase_commits,omitempty"`
	// ClientProcs is the GOMAXPROCS the load generator ran with.
	ClientProcs int `json:"client_gomaxprocs"`
	// Client is the load generator's client (ClientLean or ClientConnect).
	Client string `json:"client"`
	Pass   bool   `json:"pass"`
}

// PgRate is a rate with its latencies, each the median over the runs.
type PgRate struct {
	Rate  float64 `json:"rate"`
	P50ms float64 `json:"p50_ms"`
	P99ms float64 `json:"p99_ms"`
	// Runs are the runs' rates.
	Runs []float64 `json:"runs"`
}

// PgNodes is the sync load on one node count.
type PgNodes struct {
	Nodes int `json:"nodes"`
	// Procs is the GOMAXPROCS each node ran with (see [nodeProcs]).
	Procs int    `json:"gomaxprocs"`
	Syncs PgRate `json:"syncs"`
	// CPU splits the CPU per sync of the closed-loop load.
	CPU PgCPU `json:"cpu"`
	// Ratio is the sync rate over pgbench's, the median of the runs'
	// ratios: each run measures pgbench and the nodes one after the other.
	Ratio float64 `json:"ratio"`
	// MinRatio and MaxRatio are the lowest and highest of the runs' ratios.
	MinRatio float64 `json:"min_ratio"`
	MaxRatio float64 `json:"max_ratio"`
	// WatchP50ms and WatchP99ms are the probes' times from sending a sync
	// on one node to its commit reaching a watcher on another (0 with one
	// node); WatchSamples how many they took.
	WatchP50ms   float64 `json:"watch_p50_ms"`
	WatchP99ms   float64 `json:"watch_p99_ms"`
	WatchSamples uint64  `json:"watch_samples"`
	// WatchAfterAnswerP99ms is the probes' p99 from the sync's answer to
	// the commit's arrival at the watcher (0 when it arrived first): the
	// delivery without the sync's own latency.
	WatchAfterAnswerP99ms float64 `json:"watch_after_answer_p99_ms"`
	// PacedRate and PacedP99ms are of the paced load (half the sustained
	// rate) the probes ran beside.
	PacedRate  float64 `json:"paced_rate,omitempty"`
	PacedP99ms float64 `json:"paced_p99_ms,omitempty"`
	// PacedHandlerP99ms is the p99 of the time the nodes' Sync handlers
	// took over that measurement (from their /metrics), and PacedWakeP99ms
	// how late the bench woke for its calls, at p99: the server's share of
	// the paced p99, and the load generator's.
	PacedHandlerP99ms float64 `json:"paced_handler_p99_ms,omitempty"`
	PacedWakeP99ms    float64 `json:"paced_wake_p99_ms,omitempty"`
	// PgbenchPacedP99ms is pgbench's p99 offered PacedRate in its
	// UPDATE + INSERT transactions, from their scheduled starts: what
	// PostgreSQL alone gives at that rate on the same machine (0 without
	// pgbench).
	PgbenchPacedP99ms float64 `json:"pgbench_paced_p99_ms,omitempty"`
	// IdleWatchP99ms is the probes' p99 with no other load.
	IdleWatchP99ms float64 `json:"idle_watch_p99_ms,omitempty"`
	// Listening is the closed-loop load again, with several nodes, with an
	// idle device watch open on each node: a node listens for the others'
	// commits only while a stream on it needs them, so Syncs measures
	// nodes that do not and Listening nodes that all do.
	// ListeningRatio, ListeningMinRatio and ListeningMaxRatio are its
	// share of pgbench's rate, as Ratio, MinRatio and MaxRatio.
	Listening         PgRate  `json:"listening,omitzero"`
	ListeningRatio    float64 `json:"listening_ratio,omitempty"`
	ListeningMinRatio float64 `json:"listening_min_ratio,omitempty"`
	ListeningMaxRatio float64 `json:"listening_max_ratio,omitempty"`
}

// RunPostgres measures `dalv serve --store` nodes over one PostgreSQL:
// closed-loop device syncs spread over 1 and then 3 nodes (or as

// pgbenchPaced is the paced pgbench p99 for the table, or why there is none.
func pgbenchPaced(p99ms float64) string {
	if p99ms <= 0 {
		return "(not run)"
	}
	return fixed(2)(p99ms)
}

// WriteTable writes the report for people.
func (r *PostgresReport) WriteTable(w io.Writer) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "dalv serve --store over %s: %d devices (pgbench: as many clients), each PUTting %s, %s per measurement after %s of warm-up, median of %d runs\n\n",
		r.Server, r.Devices, keysPhrase(r.Keys), r.Duration, r.Warmup, r.Runs)
	f2 := fixed(2)
	pct := func(v float64) string { return fmt.Sprintf("%.1f%%", 100*v) }
	rows := [][]string{{"", "rate /s", "p50 ms", "p99 ms", "ratio", "target"}}
	if r.Pgbench.Rate > 0 {
		rows = append(rows,
			[]string{"pgbench: UPDATE 1 row + INSERT", group(r.Pgbench.Rate), f2(r.Pgbench.P50ms), f2(r.Pgbench.P99ms), "100%", ""},
			[]string{"pgbench: dalv's commit statement", group(r.Commit.Rate), f2(r.Commit.P50ms), f2(r.Commit.P99ms), pct(r.CommitRatio), ""})
	} else {
		rows = append(rows, []string{"pgbench", "(not run)", "", "", "", ""})
	}
	for _, n := range r.Nodes {
		target := ""
		if n.Nodes == 3 {
			target = fmt.Sprintf(">= %.0f%% %s", 100*r.Target, verdict(n.Ratio >= r.Target))
			if r.RunTarget > 0 {
				target = fmt.Sprintf(">= %.0f%%, every run >= %.0f%% %s", 100*r.Target, 100*r.RunTarget,
					verdict(n.Ratio >= r.Target && n.MinRatio >= r.RunTarget))
			}
		}
		ratio := pct(n.Ratio)
		if len(n.Syncs.Runs) > 1 && n.MaxRatio > 0 {
			ratio += fmt.Sprintf(" (%.0f–%.0f%%)", 100*n.MinRatio, 100*n.MaxRatio)
		}
		rows = append(rows, []string{"dalv syncs, " + nodeCount(n.Nodes), group(n.Syncs.Rate), f2(n.Syncs.P50ms), f2(n.Syncs.P99ms), ratio, target})
		if n.Listening.Rate > 0 {
			ratio := pct(n.ListeningRatio)
			if len(n.Listening.Runs) > 1 && n.ListeningMaxRatio > 0 {
				ratio += fmt.Sprintf(" (%.0f–%.0f%%)", 100*n.ListeningMinRatio, 100*n.ListeningMaxRatio)
			}
			rows = append(rows, []string{"  the same, a watch open on each node", group(n.Listening.Rate), f2(n.Listening.P50ms), f2(n.Listening.P99ms), ratio, ""})
		}
	}
	for _, n := range r.Nodes {
		if n.WatchSamples > 0 {
			rows = append(rows,
				[]string{fmt.Sprintf("dalv syncs, %d nodes, paced", n.Nodes), group(n.PacedRate), "", f2(n.PacedP99ms), "", ""},
				[]string{"  of which in the nodes' handlers", "", "", f2(n.PacedHandlerP99ms), "", ""},
				[]string{"  the bench's lateness to call", "", "", f2(n.PacedWakeP99ms), "", ""},
				[]string{"  pgbench alone at that rate", "", "", pgbenchPaced(n.PgbenchPacedP99ms), "", ""},
				[]string{"  beside: commit to watcher on", fmt.Sprintf("(%d)", n.WatchSamples), f2(n.WatchP50ms), f2(n.WatchP99ms), "",
					fmt.Sprintf("< %.0f ms %s", ms(TargetWatchP99), verdict(n.WatchP99ms < ms(TargetWatchP99)))},
				[]string{"  another node (from sending the sync)", "", "", "", "", ""},
				[]string{"  of which after the sync's answer", "", "", f2(n.WatchAfterAnswerP99ms), "", ""},
				[]string{"  the same, no other load", "", "", f2(n.IdleWatchP99ms), "", ""})
		}
	}
	writeColumns(&b, rows, []bool{false, true, true, true, true, false})
	if r.TwoPhase != nil {
		b.WriteString("\ntwo-phase commits on Citus, all runs (pg_dist_transaction):")
		for _, what := range []string{"pgbench", "commit"} {
			fmt.Fprintf(&b, " %s %s,", what, twoPhase(r.TwoPhase[what]))
		}
		for i, n := range r.Nodes {
			sep := ","
			if i == len(r.Nodes)-1 {
				sep = "\n"
			}
			fmt.Fprintf(&b, " %s %s%s", nodeCount(n.Nodes), twoPhase(r.TwoPhase[nodeCount(n.Nodes)]), sep)
		}
	}

	f0 := fixed(0)
	b.WriteString("\n")
	rows = [][]string{{"CPU per sync or transaction, µs:", "client", "dalv nodes", "the rest"}}
	if r.Pgbench.Rate > 0 {
		rows = append(rows,
			[]string{"  pgbench: UPDATE + INSERT", f0(r.PgbenchCPU.Client), "", f0(r.PgbenchCPU.Rest)},
			[]string{"  pgbench: dalv's commit", f0(r.CommitCPU.Client), "", f0(r.CommitCPU.Rest)})
	}
	for _, n := range r.Nodes {
		rows = append(rows, []string{"  dalv syncs, " + nodeCount(n.Nodes), f0(n.CPU.Client), f0(n.CPU.Nodes), f0(n.CPU.Rest)})
	}
	writeColumns(&b, rows, []bool{false, true, true, true})
	fmt.Fprintf(&b, "  (the rest: PostgreSQL, and anything else running on the machine)\n\n")
	fmt.Fprintf(&b, "the client (this bench, its %s client): GOMAXPROCS=%d\n", r.Client, r.ClientProcs)
	for _, n := range r.Nodes {
		fmt.Fprintf(&b, "%s: GOMAXPROCS=%d each", nodeCount(n.Nodes), n.Procs)
		if n.Nodes > 1 {
			fmt.Fprintf(&b, " (the nodes' share of the %d cores)", runtime.NumCPU())
		}
		b.WriteString("\n")
	}
	what := "dalv's commit statement, one PUT to a partition the node holds, alone (pgbench's second script;\na node's statement writes this for each commit of its group)"
	if r.TwoPhase != nil {
		what = "dalv's commit of one PUT on Citus, as a node sends it for a partition it holds no state of:\nthe head read, then one call that the partition's worker runs (pgbench's second script)"
	}
	fmt.Fprintf(&b, "\npgbench's transaction:\n%s\n%s:\n%s", r.Script, what, r.CommitScript)
	_, err := w.Write(b.Bytes())
	return err
}

// WriteJSON writes the report as indented JSON.
func (r *PostgresReport) WriteJSON(w io.Writer) error { return writeJSON(w, r) }

// twoPhase renders a count of two-phase commits, -1 as not counted.
func twoPhase(n int) string {
	if n < 0 {
		return "not counted (set citus.recover_2pc_interval = -1)"
	}
	return fmt.Sprint(n)
}

// nodeCount is "1 node", "3 nodes".
func nodeCount(n int) string { return fmt.Sprintf("%d node%s", n, plural(n)) }
