package client_test

import (
	"errors"
	"fmt"
	"os"

	"github.com/dalvdb/dalv/client"
)

// childEnv makes the test binary run as a child process in a role instead
// of running tests: TestMain dispatches on it.
const childEnv = "DALV_CLIENT_TEST_CHILD"

func runChild(role string) int {
	switch role {
	case "open":
		// Open the replica named by DALV_CLIENT_TEST_FILE and report.
		r, err := client.Open(os.Getenv("DALV_CLIENT_TEST_FILE"), client.Options{})
		if err != nil {
			fmt.Println("error:", err)
			fmt.Println("corrupt:", errors.Is(err, client.ErrCorrupt))
			return 3
		}
		r.Close()
		fmt.Println("opened")
		return 0
	case "crash":
		return crashChild()
	}
	fmt.Fprintln(os.Stderr, "unknown child role", role)
	return 2
}
