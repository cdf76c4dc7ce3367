//go:build unix

package server

import "syscall"

// fileLimit is the process's limit on open files (RLIMIT_NOFILE, the soft
// limit, which the Go runtime raises to the hard one at start).
func fileLimit() (int, bool) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == 0 {
		return 0, false
	}
	return int(min(rl.Cur, 1<<30)), true
}
