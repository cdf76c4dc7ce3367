package value

import "errors"

// ErrNotList is returned when a list op meets a key that holds a scalar.
var ErrNotList = errors.New("list op on a scalar")

// ErrBadOp is returned for an op kind Apply does not know.
var ErrBadOp = errors.New("unknown op kind")

// ErrEncoding is returned by Decode for bytes Encode did not produce.
var ErrEncoding = errors.New("bad value encoding")
