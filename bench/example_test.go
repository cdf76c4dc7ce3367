package bench_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/dalvdb/dalv/bench"
)

func ExampleParseScenarios() {
	scs, err := bench.ParseScenarios("storage,sync")
	fmt.Println(scs, err)
	// Output: [sync storage] <nil>
}

// Measure a dalv binary briefly and print the table.
func ExampleRun() {
	rep, err := bench.Run(context.Background(), bench.Config{
		Binary:    "/usr/local/bin/dalv",
		Scenarios: []bench.Scenario{bench.Sync, bench.Floor},
		Runs:      3,
		Duration:  2 * time.Second,
		Progress:  os.Stderr,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	_ = rep.WriteTable(os.Stdout)
}
