package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/internal/proc"
)

// serveFlags are the flags every `dalv serve` the benches start gets
// first: no rate limit, which would be what they measure, and warnings
// only, so the server's log stays out of the way.
var serveFlags = []string{"--rate-limit", "-1", "--log-level", "warn"}

// secrets are the credentials of the servers a bench starts: the JWT
// secret it mints device tokens with, and a backend key.
type secrets struct {
	secret []byte
	key    string
}

// newSecrets generates a JWT secret and a backend key.
func newSecrets() (secrets, error) {
	jwt, err := auth.GenerateSecret(32)
	if err != nil {
		return secrets{}, err
	}
	key, err := auth.GenerateSecret(24)
	if err != nil {
		return secrets{}, err
	}
	return secrets{secret: []byte(jwt), key: key}, nil
}

// startServe starts `binary serve` on data with serveFlags, then args, and
// the secrets and env in its environment.
func startServe(ctx context.Context, binary, data string, args []string, s secrets, env ...string) (*proc.Server, error) {
	return proc.Start(ctx, proc.Options{
		Binary: binary,
		Data:   data,
		Args:   append(append([]string(nil), serveFlags...), args...),
		Env:    append([]string{"DALV_JWT_SECRET=" + string(s.secret), "DALV_BACKEND_KEYS=" + s.key}, env...),
	})
}

// newRunID is a random name that tells one bench's users, devices and
// schema apart from another's.
func newRunID() string {
	var id [4]byte
	_, _ = rand.Read(id[:]) // never fails
	return hex.EncodeToString(id[:])
}

// exitErr says why srv is gone, if it is; nil for no server.
func exitErr(srv *proc.Server) error {
	if srv == nil {
		return nil
	}
	select {
	case <-srv.Done():
		return fmt.Errorf("%w (%v):\n%s", ErrServerDied, srv.ExitErr(), tail(srv.Stderr(), 40))
	default:
		return nil
	}
}
