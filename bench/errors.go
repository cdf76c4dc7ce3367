package bench

import "errors"

// ErrConfig is returned by [Run] for a [Config] it cannot run.
var ErrConfig = errors.New("bench: bad configuration")

// ErrScenario is returned for a scenario name that does not exist.
var ErrScenario = errors.New("bench: no such scenario")

// ErrServerDied is returned when the server the bench started exits.
var ErrServerDied = errors.New("bench: dalv serve exited")

// ErrCallFailed is returned when a call fails during a measurement: a
// benchmark with errors measures nothing.
var ErrCallFailed = errors.New("bench: calls failed")

// ErrWrongAnswer is returned when the server answers wrongly: a sync not
// accepted, a version that does not advance, a catch-up with the wrong
// number of entries or cut short.
var ErrWrongAnswer = errors.New("bench: wrong answer")
