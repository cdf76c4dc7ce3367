package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"time"

	"connectrpc.com/connect"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
)

// commitAttempts bounds the tries of one commit by the operator commands.
const commitAttempts = 4

// newIdempotencyKey returns a random idempotency key: 32 hex digits.
func newIdempotencyKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// commitOnce sends req, under a new random idempotency key unless it has
// one, and sends it again with the same key while the server answers
// unavailable (it may or may not have applied it): the commit applies at
// most once, and the answer is the version it got.
func commitOnce(ctx context.Context, c dalvv1connect.BackendServiceClient, req *dalvv1.CommitRequest) (*dalvv1.CommitResponse, error) {
	if req.GetIdempotencyKey() == "" {
		req.IdempotencyKey = newIdempotencyKey()
	}
	wait := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		resp, err := c.Commit(ctx, connect.NewRequest(req))
		if err == nil {
			return resp.Msg, nil
		}
		if connect.CodeOf(err) != connect.CodeUnavailable || attempt == commitAttempts {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, errors.Join(err, ctx.Err())
		case <-time.After(wait):
		}
		wait *= 2
	}
}
