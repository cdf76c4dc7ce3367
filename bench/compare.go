package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
)

// Comparison is two dalv binaries measured alternately in one sitting:
// each of [Config.Runs] rounds runs every scenario once with each binary,
// the baseline first in odd rounds and second in even ones (A B B A ...),
// so that a machine whose speed drifts favours neither.
type Comparison struct {
	Machine  Machine  `json:"machine"`
	Settings Settings `json:"settings"`
	// Baseline and Build are the two binaries: the one compared against,
	// and the one measured.
	Baseline string `json:"baseline"`
	Build    string `json:"build"`
	// Rows hold every figure both measured, in report order.
	Rows []CompareRow `json:"rows"`
}

// CompareRow is one figure of a [Comparison].
type CompareRow struct {
	Scenario Scenario `json:"scenario"`
	Metric   string   `json:"metric"`
	Label    string   `json:"label"`
	Unit     string   `json:"unit"`
	// Baseline and Build are each round's figure, in round order.
	Baseline []float64 `json:"baseline_runs"`
	Build    []float64 `json:"build_runs"`
	// BaselineMedian and BuildMedian are their medians.
	BaselineMedian float64 `json:"baseline_median"`
	BuildMedian    float64 `json:"build_median"`
	// Ratio, RatioMin and RatioMax are the median, lowest and highest of
	// the rounds' ratios of Build's figure to Baseline's, of the Ratios
	// rounds whose baseline figure is not 0.
	Ratio    float64 `json:"ratio"`
	RatioMin float64 `json:"ratio_min"`
	RatioMax float64 `json:"ratio_max"`
	Ratios   int     `json:"ratios"`
	// Lower counts the rounds in which Build's figure is below Baseline's.
	Lower int `json:"lower"`
}

// Compare measures cfg.Binary against the baseline binary, alternately,
// and returns both binaries' figures side by side with each round's ratio.
// cfg.URL and cfg.ServerProfile must be empty.
func Compare(ctx context.Context, cfg Config, baseline string) (*Comparison, error) {
	if cfg.URL != "" || cfg.ServerProfile != "" {
		return nil, errors.New("a comparison starts both servers itself and profiles neither: no URL or server profile")
	}
	if baseline == "" {
		return nil, errors.New("no baseline binary to compare against")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	build := cfg.Binary
	var base, this []*Report
	for round := 1; round <= cfg.Runs; round++ {
		order := []string{baseline, build}
		if round%2 == 0 {
			order = []string{build, baseline}
		}
		for _, bin := range order {
			if cfg.Progress != nil {
				fmt.Fprintf(cfg.Progress, "round %d/%d: %s\n", round, cfg.Runs, bin)
			}
			c := cfg
			c.Runs, c.Binary = 1, bin
			rep, err := Run(ctx, c)
			if err != nil {
				return nil, fmt.Errorf("round %d, %s: %w", round, bin, err)
			}
			if bin == baseline {
				base = append(base, rep)
			} else {
				this = append(this, rep)
			}
		}
	}
	c := &Comparison{Machine: ThisMachine(), Settings: newReport(cfg).Settings, Baseline: baseline, Build: build,
		Rows: compareRows(base, this)}
	return c, nil
}

// compareRows pairs the figures of base[i] and this[i], one-run reports of
// the same round, for every figure both have in every round.
func compareRows(base, this []*Report) []CompareRow {
	var rows []CompareRow
	for _, m := range metrics {
		row := CompareRow{Scenario: m.scenario, Metric: m.name, Label: m.label, Unit: m.unit}
		var ratios []float64
		for i := range min(len(base), len(this)) {
			a, okA := figure(base[i], m)
			b, okB := figure(this[i], m)
			if !okA || !okB {
				row.Baseline = nil
				break
			}
			row.Baseline, row.Build = append(row.Baseline, a), append(row.Build, b)
			if a != 0 {
				ratios = append(ratios, b/a)
			}
			if b < a {
				row.Lower++
			}
		}
		if len(row.Baseline) == 0 {
			continue
		}
		row.BaselineMedian = median(slices.Clone(row.Baseline), meanOfMiddle)
		row.BuildMedian = median(slices.Clone(row.Build), meanOfMiddle)
		if row.Ratios = len(ratios); row.Ratios > 0 {
			row.Ratio = median(slices.Clone(ratios), meanOfMiddle)
			row.RatioMin, row.RatioMax = slices.Min(ratios), slices.Max(ratios)
		}
		rows = append(rows, row)
	}
	return rows
}

// figure is m's figure in a one-run report.
func figure(r *Report, m metric) (float64, bool) {
	i := slices.IndexFunc(r.Results, func(x Result) bool { return x.Scenario == m.scenario && x.Metric == m.name })
	if i < 0 || len(r.Results[i].Runs) == 0 {
		return 0, false
	}
	return r.Results[i].Runs[0], true
}

// WriteTable writes the comparison for people: per figure, both medians,
// the median of the rounds' ratios with the lowest and highest, and in how
// many rounds the build's figure was the lower.
func (c *Comparison) WriteTable(w io.Writer) error {
	rows := [][]string{{"scenario", "figure", "baseline", "build", "unit", "build/baseline", "lowest", "highest", "build lower"}}
	for _, r := range c.Rows {
		m := metrics[slices.IndexFunc(metrics, func(m metric) bool { return m.scenario == r.Scenario && m.name == r.Metric })]
		ratio, lo, hi := "–", "–", "–" // every round's baseline was 0
		if r.Ratios > 0 {
			ratio, lo, hi = fmt.Sprintf("%.3f", r.Ratio), fmt.Sprintf("%.3f", r.RatioMin), fmt.Sprintf("%.3f", r.RatioMax)
		}
		rows = append(rows, []string{string(r.Scenario), r.Label, m.format(r.BaselineMedian), m.format(r.BuildMedian), r.Unit,
			ratio, lo, hi, fmt.Sprintf("%d of %d", r.Lower, len(r.Baseline))})
	}
	var buf bytes.Buffer
	writeColumns(&buf, rows, []bool{false, false, true, true, false, true, true, true, true})
	s := c.Settings
	fmt.Fprintf(&buf, "\nbaseline: %s\nbuild:    %s\n%d rounds, each binary once a round, the baseline first in odd rounds and second in even ones; medians of the rounds.\n"+
		"each run: %s after %s of warm-up, %d devices over %d users, %s, gzip %v; dalv serve on loopback, started by the bench on a fresh data directory.\n"+
		"machine: %s, %d cores, Linux %s, %s %s/%s, load average %s at the start; the load generator shares it.\n",
		c.Baseline, c.Build, s.Runs, s.Duration, s.Warmup, s.Devices, s.Users, s.Protocol, s.Gzip,
		c.Machine.CPU, c.Machine.Cores, c.Machine.Kernel, c.Machine.Go, c.Machine.OS, c.Machine.Arch, c.Machine.LoadAverage)
	_, err := w.Write(buf.Bytes())
	return err
}

// WriteJSON writes the comparison as indented JSON.
func (c *Comparison) WriteJSON(w io.Writer) error { return writeJSON(w, c) }
