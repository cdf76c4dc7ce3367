package server

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/engine"
	"github.com/dalvdb/dalv/rules"
	"github.com/dalvdb/dalv/store"
	"github.com/dalvdb/dalv/value"
)

// codeTable maps domain errors to Connect codes: the one place that does.
var codeTable = []struct {
	err  error
	code connect.Code
}{
	{value.ErrInvalid, connect.CodeInvalidArgument},
	{value.ErrLimit, connect.CodeResourceExhausted},
	{engine.ErrPermission, connect.CodePermissionDenied},
	{engine.ErrStale, connect.CodeFailedPrecondition},
	{engine.ErrState, connect.CodeFailedPrecondition},
	{engine.ErrKeyReused, connect.CodeFailedPrecondition},
	{engine.ErrChanged, connect.CodeAborted},
	{engine.ErrOutOfRange, connect.CodeOutOfRange},
	{rules.ErrPermission, connect.CodePermissionDenied},
	{rules.ErrInvalid, connect.CodeInvalidArgument},
	{errNotFound, connect.CodeNotFound},
	{errRateLimited, connect.CodeResourceExhausted},
	{errUnauthenticated, connect.CodeUnauthenticated},
	{errUnavailable, connect.CodeUnavailable},
	{auth.ErrMissingToken, connect.CodeUnauthenticated},
	{auth.ErrMalformedToken, connect.CodeUnauthenticated},
	{auth.ErrAlgorithm, connect.CodeUnauthenticated},
	{auth.ErrSignature, connect.CodeUnauthenticated},
	{auth.ErrExpired, connect.CodeUnauthenticated},
	{auth.ErrNotYetValid, connect.CodeUnauthenticated},
	{auth.ErrMissingExpiry, connect.CodeUnauthenticated},
	{auth.ErrMissingSubject, connect.CodeUnauthenticated},
	{auth.ErrAudience, connect.CodeUnauthenticated},
	{auth.ErrIssuer, connect.CodeUnauthenticated},
	{auth.ErrNotUTF8, connect.CodeUnauthenticated},
	{auth.ErrDuplicateClaim, connect.CodeUnauthenticated},
	{auth.ErrUserID, connect.CodeUnauthenticated},
	{auth.ErrUnknownKey, connect.CodeUnauthenticated},
	{store.ErrClosed, connect.CodeUnavailable},
	{store.ErrUnavailable, connect.CodeUnavailable},
	{store.ErrCorruption, connect.CodeDataLoss},
	{context.Canceled, connect.CodeCanceled},
	{context.DeadlineExceeded, connect.CodeDeadlineExceeded},
}

// Errors of the server's own.
var (
	errNotFound        = errors.New("not found")
	errRateLimited     = errors.New("rate limited")
	errUnauthenticated = errors.New("unauthenticated")
	errUnavailable     = errors.New("unavailable")
)

// toConnect turns err into a Connect error with the code from codeTable.
// Errors not in the table are internal: logged in full, answered briefly.
func (s *Server) toConnect(procedure string, err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	for _, row := range codeTable {
		if errors.Is(err, row.err) {
			return connect.NewError(row.code, err)
		}
	}
	s.log.Error("internal error", "procedure", procedure, "err", err)
	return connect.NewError(connect.CodeInternal, errors.New("internal error; the server log has the details"))
}

// badRequestStream answers a streaming call whose request cannot be read
// (cut inside its envelope, flagged compressed without an encoding) with
// invalid_argument: connect-go reports these as internal, which would
// blame the server for a client's bad input.
type badRequestStream struct{}

func (badRequestStream) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }

func (badRequestStream) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (badRequestStream) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		return next(ctx, requestReader{conn})
	}
}

// requestReader is a stream whose request-reading errors name bad input.
type requestReader struct{ connect.StreamingHandlerConn }

func (c requestReader) Receive(m any) error {
	err := c.StreamingHandlerConn.Receive(m)
	if connect.CodeOf(err) == connect.CodeInternal {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("the request cannot be read: %w", err))
	}
	return err
}
