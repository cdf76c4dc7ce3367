package bench

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// oneRun is a one-run report of the given figures, by metric id.
func oneRun(vals map[string]float64) *Report {
	r := &Report{}
	r.add(vals)
	r.finish()
	return r
}

// TestCompareRows pairs the rounds' figures: medians of each binary, the
// median, lowest and highest of the rounds' ratios, the rounds in which the
// build was lower; a figure missing from a round is left out.
func TestCompareRows(t *testing.T) {
	rate, errs, cpu, floor := metricID(Sync, "rate"), metricID(Sync, "errors"), metricID(Sync, "server_cpu"), metricID(Floor, "rate")
	base := []*Report{
		oneRun(map[string]float64{rate: 100, errs: 0, cpu: 80, floor: 1}),
		oneRun(map[string]float64{rate: 200, errs: 0, cpu: 80}),
		oneRun(map[string]float64{rate: 100, errs: 0, cpu: 0, floor: 1}),
	}
	this := []*Report{
		oneRun(map[string]float64{rate: 110, errs: 0, cpu: 40, floor: 1}),
		oneRun(map[string]float64{rate: 180, errs: 0, cpu: 60}),
		oneRun(map[string]float64{rate: 150, errs: 0, cpu: 10, floor: 1}),
	}
	rows := compareRows(base, this)
	if len(rows) != 3 {
		t.Fatalf("%d rows, want 3 (the floor's rate is missing from a round): %+v", len(rows), rows)
	}
	// No round has a ratio of errors: the table says so rather than 0.
	var table strings.Builder
	if err := (&Comparison{Rows: rows}).WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	if line := strings.Split(table.String(), "\n")[2]; rows[1].Metric != "errors" || rows[1].Ratios != 0 || strings.Count(line, "–") != 3 {
		t.Errorf("errors row %+v printed as %q, want – for each ratio", rows[1], line)
	}
	rows = slices.Delete(rows, 1, 2)
	r := rows[0]
	if r.Metric != "rate" || r.BaselineMedian != 100 || r.BuildMedian != 150 || r.Ratio != 1.1 || r.RatioMin != 0.9 || r.RatioMax != 1.5 || r.Ratios != 3 || r.Lower != 1 {
		t.Errorf("sync rate row = %+v, want medians 100 and 150, ratios 1.1 (0.9–1.5), lower in 1", r)
	}
	r = rows[1]
	// The third round's baseline CPU is 0: no ratio, but it counts as a round.
	if r.Metric != "server_cpu" || r.Ratio != 0.625 || r.RatioMin != 0.5 || r.RatioMax != 0.75 || r.Ratios != 2 || r.Lower != 2 || len(r.Build) != 3 {
		t.Errorf("server CPU row = %+v, want ratios 0.625 (0.5–0.75), lower in 2 of 3", r)
	}
}

// TestCompare measures a binary against a copy of itself, two rounds of
// the floor scenario, and checks that both were measured in every round.
func TestCompare(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	bin := dalvBinary(t)
	copied := filepath.Join(t.TempDir(), "dalv-copy")
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(copied, b, 0o755); err != nil {
		t.Fatal(err)
	}
	var progress strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	comparison, err := Compare(ctx, Config{Binary: bin, Dir: t.TempDir(), Progress: &progress, Scenarios: []Scenario{Floor},
		Runs: 2, Duration: 200 * time.Millisecond, Warmup: 50 * time.Millisecond, Devices: 4}, copied)
	if err != nil {
		t.Fatalf("Compare: %v", err)
	}
	logTable(t, "Compare", start, comparison)
	// Odd rounds start with the baseline, even ones with the build.
	want := "round 1/2: " + copied + "\nround 1/2: " + bin + "\nround 2/2: " + bin + "\nround 2/2: " + copied + "\n"
	var got strings.Builder
	for line := range strings.Lines(progress.String()) {
		if strings.HasPrefix(line, "round ") {
			got.WriteString(line)
		}
	}
	if got.String() != want {
		t.Errorf("rounds ran in the order\n%s\nwant\n%s", got.String(), want)
	}
	i := -1
	for j, r := range comparison.Rows {
		if r.Scenario == Floor && r.Metric == "rate" {
			i = j
		}
	}
	if i < 0 {
		t.Fatalf("no floor rate row in %+v", comparison.Rows)
	}
	if r := comparison.Rows[i]; len(r.Baseline) != 2 || len(r.Build) != 2 || !(r.BaselineMedian > 0) || !(r.BuildMedian > 0) || !(r.Ratio > 0) {
		t.Errorf("floor rate row = %+v, want two rounds of each, all measured", r)
	}
	if _, err := Compare(ctx, Config{Binary: bin, URL: "http://127.0.0.1:1"}, copied); err == nil {
		t.Error("Compare with a URL: no error")
	}
}
