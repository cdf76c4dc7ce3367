// Package e2e holds DalvDB's end-to-end tests: they build the dalv binary,
// start `dalv serve` as a process on a free loopback port, and speak to it
// over HTTP with the generated Connect client and with raw JSON as curl
// sends it. Crash tests SIGKILL the process.
package e2e
