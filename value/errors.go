package value

import (
	"errors"
	"fmt"
)

// ErrNotList is returned when a list op meets a key that holds a scalar.
var ErrNotList = errors.New("list op on a scalar")

// ErrBadOp is returned for an op kind Apply does not know.
var ErrBadOp = errors.New("unknown op kind")

// ErrEncoding is returned by Decode for bytes Encode did not produce.
var ErrEncoding = errors.New("bad value encoding")

// The errors of the checks every side shares. Each is wrapped with a
// message that says what was wrong; package server maps them to Connect
// codes in one table.
var (
	// ErrInvalid marks malformed input: a bad key, op, value or field.
	ErrInvalid = errors.New("invalid argument")
	// ErrLimit marks input past a configured limit; the message names it.
	ErrLimit = errors.New("limit exceeded")
)

// kindError is an error of one of the kinds above whose message is only the
// specific text, so a client reads "key \"x\" is empty", not the kind twice.
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

// Errorf returns an error of kind (a sentinel error such as ErrInvalid)
// whose message is only the formatted text.
func Errorf(kind error, format string, args ...any) error {
	return &kindError{kind: kind, msg: fmt.Sprintf(format, args...)}
}
