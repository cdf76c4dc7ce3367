package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Targets: what DalvDB aims for on a 2-core machine with the load generator
// on the same machine.
const (
	// TargetSyncRate is the least durable single-op syncs per second, and
	// AimSyncRate what we aim for.
	TargetSyncRate = 20_000
	AimSyncRate    = 30_000
	// TargetSyncP99 is the most a sync may take at the 99th percentile
	// with DefaultPacedRate syncs/s offered.
	TargetSyncP99 = 15 * time.Millisecond
	// DefaultPacedRate is the syncs/s the paced measurement offers.
	DefaultPacedRate = 10_000
	// TargetCatchupEntries, TargetCatchupBytes and TargetCatchupTime bound
	// the pull of a device that missed the catch-up commits.
	TargetCatchupEntries = 100
	TargetCatchupBytes   = 20_000
	TargetCatchupTime    = 20 * time.Millisecond
	// TargetFloorRatio is the least share of the no-op call rate the sync
	// rate must reach.
	TargetFloorRatio = 0.6
	// TargetCPURatio is the most server CPU a durable sync may take, as a
	// multiple of the no-op call's.
	TargetCPURatio = 1.5
	// TargetRSS is the most resident memory the server may use.
	TargetRSS = 64_000_000
	// TargetDiskRatio is the most the data directory may take, compacted,
	// as a multiple of the encoded size of what the store keeps.
	TargetDiskRatio = 3
)

// metric describes one figure: how to print it and its target, if any.
type metric struct {
	scenario Scenario
	name     string // with the scenario, its id
	label    string
	unit     string
	format   func(float64) string
	target   string
	pass     func(float64) bool // nil: no target
}

func metricID(sc Scenario, name string) string { return string(sc) + "." + name }

func fixed(digits int) func(float64) string {
	return func(v float64) string { return fmt.Sprintf("%.*f", digits, v) }
}

// keysPhrase says what each syncing device PUTs: one key, or keys in turn.
func keysPhrase(keys int) string {
	if keys <= 1 {
		return "one key"
	}
	return fmt.Sprintf("%d keys in turn (measured once each device had PUT them all)", keys)
}

func megabytes(v float64) string { return fmt.Sprintf("%.1f", v/1e6) }

// rssMetrics are a scenario's peak RSS and the part of it mapped from files:
// the server's executable, of which Linux counts every page a process has
// mapped, and maps more of it when the page cache holds it in large pages.
func rssMetrics(sc Scenario) []metric {
	return []metric{
		{sc, "rss", "server peak RSS", "MB", megabytes, fmt.Sprintf("< %d MB", TargetRSS/1_000_000),
			func(v float64) bool { return v < TargetRSS }},
		{sc, "rss_file", "  of which mapped from files", "MB", megabytes, "", nil},
	}
}

// metrics are every figure, in report order.
var metrics = slices.Concat([]metric{
	{Sync, "rate", "durable syncs/s", "syncs/s", group, fmt.Sprintf(">= %s (aim %s)", group(TargetSyncRate), group(AimSyncRate)),
		func(v float64) bool { return v >= TargetSyncRate }},
	{Sync, "p50", "latency p50 (saturated)", "ms", fixed(2), "", nil},
	{Sync, "p99", "latency p99 (saturated)", "ms", fixed(2), "", nil},
	{Sync, "errors", "errors", "", fixed(0), "0", func(v float64) bool { return v == 0 }},
	{Sync, "server_cpu", "server CPU per sync", "µs", fixed(1), "", nil},
	{Sync, "bench_cpu", "bench CPU per sync", "µs", fixed(1), "", nil},
	{Sync, "server_cores", "server CPU use", "cores", fixed(2), "", nil},
	{Sync, "bench_cores", "bench CPU use", "cores", fixed(2), "", nil},
	{Sync, "other_cores", "other processes' CPU use", "cores", fixed(2), "", nil},
	{Sync, "alloc_bytes", "server heap allocation per sync", "bytes", group, "", nil},
	{Sync, "alloc_objects", "server heap objects per sync", "", fixed(1), "", nil},
	{Sync, "paced_rate", "paced: syncs/s done", "syncs/s", group, "", nil},
	{Sync, "paced_p50", "paced: latency p50", "ms", fixed(2), "", nil},
	{Sync, "paced_p99", "paced: latency p99", "ms", fixed(2), fmt.Sprintf("< %v ms", ms(TargetSyncP99)),
		func(v float64) bool { return v < ms(TargetSyncP99) }},
	{Sync, "paced_wake_p99", "paced: the load generator's wake-up lag p99", "ms", fixed(2), "", nil},
	{Sync, "paced_server_p99", "paced: p99 in the server's handler", "ms", fixed(2), "", nil},
	{Sync, "paced_fsync_p99", "paced: the server's WAL fsync p99", "ms", fixed(2), "", nil},
	{Sync, "paced_per_fsync", "paced: syncs per WAL fsync", "", fixed(1), "", nil},
	{Sync, "paced_stalls", "paced: Pebble write stalls", "", fixed(0), "", nil},
	{Sync, "paced_other_cores", "paced: other processes' CPU use", "cores", fixed(2), "", nil},
}, rssMetrics(Sync), []metric{
	{Catchup, "time", "pull time (median)", "ms", fixed(2), fmt.Sprintf("< %v ms", ms(TargetCatchupTime)),
		func(v float64) bool { return v < ms(TargetCatchupTime) }},
	{Catchup, "entries", "entries", "", fixed(0), fmt.Sprintf("<= %d", TargetCatchupEntries),
		func(v float64) bool { return v <= TargetCatchupEntries }},
	{Catchup, "proto_bytes", "answer size (protobuf)", "bytes", group, fmt.Sprintf("< %s", group(TargetCatchupBytes)),
		func(v float64) bool { return v < TargetCatchupBytes }},
	{Catchup, "http_bytes", "answer size (HTTP body)", "bytes", group, fmt.Sprintf("< %s", group(TargetCatchupBytes)),
		func(v float64) bool { return v < TargetCatchupBytes }},
	{Catchup, "more", "more", "", func(v float64) string { return fmt.Sprint(v != 0) }, "false",
		func(v float64) bool { return v == 0 }},
	{Catchup, "setup_rate", "setup commits/s (serial)", "commits/s", group, "", nil},
}, rssMetrics(Catchup), []metric{
	{Floor, "rate", "no-op calls/s (health check)", "calls/s", group, "", nil},
	{Floor, "p50", "latency p50", "ms", fixed(2), "", nil},
	{Floor, "p99", "latency p99", "ms", fixed(2), "", nil},
	{Floor, "server_cpu", "server CPU per call", "µs", fixed(1), "", nil},
	{Floor, "bench_cpu", "bench CPU per call", "µs", fixed(1), "", nil},
	{Floor, "server_cores", "server CPU use", "cores", fixed(2), "", nil},
	{Floor, "bench_cores", "bench CPU use", "cores", fixed(2), "", nil},
	{Floor, "other_cores", "other processes' CPU use", "cores", fixed(2), "", nil},
	{Floor, "ratio", "sync rate / no-op rate", "%", fixed(1), fmt.Sprintf(">= %.0f%%", 100*TargetFloorRatio),
		func(v float64) bool { return v >= 100*TargetFloorRatio }},
	{Floor, "cpu_ratio", "server CPU per sync / per no-op call", "×", fixed(2), fmt.Sprintf("<= %v×", TargetCPURatio),
		func(v float64) bool { return v <= TargetCPURatio }},
}, rssMetrics(Floor), []metric{
	{Storage, "rate", "durable syncs/s in the engine alone", "syncs/s", group, "", nil},
	{Storage, "p50", "latency p50", "ms", fixed(2), "", nil},
	{Storage, "p99", "latency p99", "ms", fixed(2), "", nil},
	{Storage, "bench_cpu", "CPU per sync", "µs", fixed(1), "", nil},
	{Storage, "bench_cores", "bench CPU use", "cores", fixed(2), "", nil},
	{Storage, "other_cores", "other processes' CPU use", "cores", fixed(2), "", nil},
	{Storage, "ratio", "sync rate / the engine's rate", "%", fixed(1), "", nil},
	{Storage, "paced_p99", "paced at the sync's rate: latency p99", "ms", fixed(2), "", nil},
	{Storage, "floor_cpu", "a sync's server CPU floor: no-op call + the engine's sync", "µs", fixed(1), "", nil},
	{Storage, "floor_cpu_ratio", "  that floor / server CPU per no-op call", "×", fixed(2), "", nil},
	{Storage, "floor_rate", "  syncs/s these cores give at that floor, with the bench's CPU per sync", "syncs/s", group, "", nil},
}, rssMetrics(Storage), watchMetrics, []metric{
	{Disk, "dir_bytes", "data directory after the run", "MB", megabytes, "", nil},
	{Disk, "per_commit", "bytes per retained commit", "bytes", group, "", nil},
	{Disk, "per_commit_compacted", "  the same after a full compaction", "bytes", group, "", nil},
	{Disk, "per_key_compacted", "bytes per live key, compacted", "bytes", group, "", nil},
	{Disk, "ratio", "directory / encoded size kept", "×", fixed(2), "", nil},
	{Disk, "ratio_compacted", "  the same after a full compaction", "×", fixed(2), fmt.Sprintf("<= %v×", TargetDiskRatio),
		func(v float64) bool { return v <= TargetDiskRatio }},
})

// Report is what [Run] measured.
type Report struct {
	Machine  Machine  `json:"machine"`
	Settings Settings `json:"settings"`
	// Results has one entry per figure measured, in report order.
	Results []Result `json:"results"`
	// Pass is true when every figure with a target meets it.
	Pass bool `json:"pass"`
}

// Machine describes where the bench ran.
type Machine struct {
	CPU    string `json:"cpu"`
	Cores  int    `json:"cores"`
	Kernel string `json:"kernel"`
	Go     string `json:"go"`
	OS     string `json:"os"`
	Arch   string `json:"arch"`
	// LoadAverage is /proc/loadavg's 1, 5 and 15-minute load averages when
	// the bench started: what the machine was doing before it.
	LoadAverage string `json:"load_average"`
}

// Settings are the parameters of the runs.
type Settings struct {
	Runs           int      `json:"runs"`
	Duration       string   `json:"duration"`
	Warmup         string   `json:"warmup"`
	Devices        int      `json:"devices"`
	Users          int      `json:"users"`
	ValueBytes     int      `json:"value_bytes"`
	Keys           int      `json:"keys"`
	PacedRate      float64  `json:"paced_rate"`
	CatchupCommits int      `json:"catchup_commits"`
	CatchupKeys    int      `json:"catchup_keys"`
	CatchupPulls   int      `json:"catchup_pulls"`
	Watchers       int      `json:"watchers"`
	WatchUsers     int      `json:"watch_users"`
	DeliveryRate   float64  `json:"delivery_rate"`
	IdleWatchers   int      `json:"idle_watchers"`
	IdleUsers      int      `json:"idle_users"`
	Protocol       string   `json:"protocol"`
	Gzip           bool     `json:"gzip"`
	Client         string   `json:"client"`
	Server         string   `json:"server"`
	ServerArgs     []string `json:"server_args,omitempty"`
}

// Result is one figure over the runs.
type Result struct {
	Scenario Scenario `json:"scenario"`
	// Metric is the figure's id within its scenario, Label its
	// description, Unit its unit (empty for counts).
	Metric string `json:"metric"`
	Label  string `json:"label"`
	Unit   string `json:"unit"`
	// Runs are the figures of each run that measured it; Median, Min and
	// Max summarise them.
	Runs   []float64 `json:"runs"`
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	// Target is the target as text, empty if none; Pass whether the
	// median meets it (nil without a target).
	Target string `json:"target,omitempty"`
	Pass   *bool  `json:"pass,omitempty"`
}

func newReport(cfg Config) *Report {
	s := Settings{
		Runs: cfg.Runs, Duration: cfg.Duration.String(), Warmup: cfg.Warmup.String(),
		Devices: cfg.Devices, Users: cfg.Users, ValueBytes: cfg.ValueBytes, Keys: cfg.Keys, PacedRate: cfg.PacedRate,
		CatchupCommits: cfg.CatchupCommits, CatchupKeys: cfg.CatchupKeys, CatchupPulls: cfg.CatchupPulls,
		Watchers: cfg.Watchers, WatchUsers: cfg.WatchUsers, DeliveryRate: cfg.DeliveryRate,
		IdleWatchers: cfg.IdleWatchers, IdleUsers: cfg.IdleUsers,
		Protocol: "Connect, protobuf, HTTP/1.1", Gzip: cfg.Gzip, Client: cfg.Client, Server: cfg.URL, ServerArgs: cfg.ServerArgs,
	}
	if cfg.H2C {
		s.Protocol = "Connect, protobuf, h2c"
	}
	if strings.HasPrefix(cfg.URL, "https://") {
		s.Protocol = strings.Replace(s.Protocol, "h2c", "HTTP/2", 1) + " over TLS"
	}
	if s.Server == "" {
		s.Server = "dalv serve on loopback, started by the bench"
	}
	return &Report{Machine: ThisMachine(), Settings: s, Pass: true}
}

// add records one run's figures.
func (r *Report) add(vals map[string]float64) {
	for _, m := range metrics {
		v, ok := vals[metricID(m.scenario, m.name)]
		if !ok {
			continue
		}
		i := slices.IndexFunc(r.Results, func(x Result) bool { return x.Scenario == m.scenario && x.Metric == m.name })
		if i < 0 {
			r.Results = append(r.Results, Result{Scenario: m.scenario, Metric: m.name, Label: m.label, Unit: m.unit, Target: m.target})
			i = len(r.Results) - 1
		}
		r.Results[i].Runs = append(r.Results[i].Runs, v)
	}
}

// finish computes the medians and the verdicts, in report order.
func (r *Report) finish() {
	order := func(x Result) int {
		return slices.IndexFunc(metrics, func(m metric) bool { return m.scenario == x.Scenario && m.name == x.Metric })
	}
	slices.SortStableFunc(r.Results, func(a, b Result) int { return order(a) - order(b) })
	r.Pass = true
	for i := range r.Results {
		res := &r.Results[i]
		sorted := slices.Sorted(slices.Values(res.Runs))
		res.Min, res.Max, res.Median = sorted[0], sorted[len(sorted)-1], median(sorted, meanOfMiddle)
		if m := metrics[order(*res)]; m.pass != nil {
			ok := m.pass(res.Median)
			res.Pass = &ok
			r.Pass = r.Pass && ok
		}
	}
}

// evenCount says how [median] takes the median of an even count of values.
type evenCount int

const (
	// meanOfMiddle takes the mean of the two middle values: the embedded
	// bench's report and its catch-up times.
	meanOfMiddle evenCount = iota
	// upperOfMiddle takes the upper of the two middle values, a figure one
	// run measured: the PostgreSQL bench, whose figures taken together
	// (a paced rate and its p99) must come from one run.
	upperOfMiddle
)

// median sorts v and returns its middle value, 0 when v is empty; even
// says which with an even count.
func median[T float64 | time.Duration](v []T, even evenCount) T {
	n := len(v)
	if n == 0 {
		return 0
	}
	slices.Sort(v)
	if n%2 == 1 || even == upperOfMiddle {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// WriteTable writes the report for people: one row per figure with its
// median, min, max, target and verdict, then the settings and the machine.
func (r *Report) WriteTable(w io.Writer) error {
	rows := [][]string{{"scenario", "figure", "median", "min", "max", "unit", "target", "result"}}
	for _, res := range r.Results {
		m := metrics[slices.IndexFunc(metrics, func(m metric) bool { return m.scenario == res.Scenario && m.name == res.Metric })]
		v := ""
		if res.Pass != nil {
			v = verdict(*res.Pass)
		}
		rows = append(rows, []string{string(res.Scenario), res.Label,
			m.format(res.Median), m.format(res.Min), m.format(res.Max), res.Unit, res.Target, v})
	}
	var buf bytes.Buffer
	writeColumns(&buf, rows, []bool{false, false, true, true, true, false, false, false})
	s := r.Settings
	summary := "all targets met"
	if !r.Pass {
		summary = "some targets MISSED"
	}
	fmt.Fprintf(&buf, "\n%s: median of %d runs (%s each after %s of warm-up), %d devices over %d users, each PUTting %s, %s, gzip %v, the %s client; %s.\n"+
		"machine: %s, %d cores, Linux %s, %s %s/%s, load average %s at the start; the load generator shares it.\n",
		summary, s.Runs, s.Duration, s.Warmup, s.Devices, s.Users, keysPhrase(s.Keys), s.Protocol, s.Gzip, s.Client, s.Server,
		r.Machine.CPU, r.Machine.Cores, r.Machine.Kernel, r.Machine.Go, r.Machine.OS, r.Machine.Arch, r.Machine.LoadAverage)
	if s.PacedRate > 0 {
		fmt.Fprintf(&buf, "paced: the same devices offered %s syncs/s in all, each on a fixed schedule; latency counts from the scheduled start.\n", group(s.PacedRate))
	}
	buf.WriteString(s.watchLines(func(sc Scenario) bool {
		return slices.ContainsFunc(r.Results, func(x Result) bool { return x.Scenario == sc })
	}))
	var others float64
	for _, res := range r.Results {
		if strings.HasSuffix(res.Metric, "other_cores") {
			others = max(others, res.Max)
		}
	}
	if others >= noisyCores {
		fmt.Fprintf(&buf, "warning: other processes used up to %.2f cores while measuring; the figures are lower than the machine gives.\n", others)
	}
	_, err := w.Write(buf.Bytes())
	return err
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error { return writeJSON(w, r) }

// writeJSON writes v as indented JSON, with <, > and & as they are (the
// targets hold them).
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// verdict is a figure's result against its target, as the tables print it.
func verdict(pass bool) string {
	if pass {
		return "pass"
	}
	return "MISS"
}

// writeColumns writes rows as a table for people: columns two spaces
// apart, each as wide as its widest cell, numeric ones aligned right.
func writeColumns(buf *bytes.Buffer, rows [][]string, numeric []bool) {
	widths := make([]int, len(numeric))
	for _, row := range rows {
		for i, cell := range row {
			widths[i] = max(widths[i], utf8.RuneCountInString(cell))
		}
	}
	for _, row := range rows {
		line := make([]string, len(row))
		for i, cell := range row {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(cell))
			if numeric[i] {
				line[i] = pad + cell
			} else {
				line[i] = cell + pad
			}
		}
		buf.WriteString(strings.TrimRight(strings.Join(line, "  "), " "))
		buf.WriteByte('\n')
	}
}

// noisyCores is the CPU use of other processes from which the table warns.
const noisyCores = 0.2

// ThisMachine describes the machine the process runs on.
func ThisMachine() Machine {
	m := Machine{CPU: "unknown", Cores: runtime.NumCPU(), Kernel: "unknown", Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	m.LoadAverage = "unknown"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			m.LoadAverage = strings.Join(f[:3], " ")
		}
	}
	return m
}
