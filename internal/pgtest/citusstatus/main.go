// Command citusstatus prints one line saying whether the Citus test suites
// can run on this machine, and why not: `go test` shows nothing of a
// passing package's skips, so `make test` runs it after the suites.
package main

import (
	"fmt"

	"github.com/dalvdb/dalv/internal/pgtest"
)

func main() {
	if why := pgtest.CitusMissing(); why != "" {
		fmt.Println("The Citus tests did not run:", why)
		return
	}
	fmt.Println("The Citus tests ran (store/postgres and e2e, TestCitus* and TestHistoryCitus).")
}
