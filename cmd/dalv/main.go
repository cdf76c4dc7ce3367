// Command dalv is DalvDB's one binary: the server (serve), development tokens
// (token), the benchmark (bench), and operator commands over the backend API.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "dalv:", err)
		os.Exit(1)
	}
}
