//go:build !unix

package server

// fileLimit reports no limit on open files where the system has no
// RLIMIT_NOFILE.
func fileLimit() (int, bool) { return 0, false }
