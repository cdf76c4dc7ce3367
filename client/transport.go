package client

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"connectrpc.com/connect"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
)

// tokenState is the token in use and the one whose user was checked.
type tokenState struct {
	mu       sync.Mutex
	tok      string
	verified string // GetConfig confirmed this token is for the replica's user
}

// token returns the token to send; fresh asks the TokenSource again.
func (r *Replica) token(ctx context.Context, fresh bool) (string, error) {
	r.tok.mu.Lock()
	defer r.tok.mu.Unlock()
	if r.tok.tok != "" && !fresh {
		return r.tok.tok, nil
	}
	t, err := r.opts.TokenSource(ctx)
	if err != nil {
		return "", &tokenSourceError{err}
	}
	if t == "" {
		return "", &tokenSourceError{errors.New("it returned an empty token")}
	}
	r.tok.tok = t
	return t, nil
}

// forgetVerified makes the next request fetch the config again.
func (r *Replica) forgetVerified() {
	r.tok.mu.Lock()
	r.tok.verified = ""
	r.tok.mu.Unlock()
}

// withToken runs call with the current token, first checking with GetConfig
// that a token not yet checked is for the replica's user. When the server
// answers unauthenticated it asks the TokenSource again and retries once.
func (r *Replica) withToken(ctx context.Context, call func(ctx context.Context, tok string) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(r.life, cancel)()
	tok, err := r.token(ctx, false)
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		err = r.verify(ctx, tok)
		if err == nil {
			err = call(ctx, tok)
		}
		r.noteReachable(err)
		if attempt > 0 || connect.CodeOf(err) != connect.CodeUnauthenticated {
			return err
		}
		r.log.Debug("token refused; asking the token source again", "err", err)
		if tok, err = r.token(ctx, true); err != nil {
			return err
		}
	}
}

// verify fetches the server's config with tok unless tok was checked
// already, and refuses a token for another user than the replica's.
func (r *Replica) verify(ctx context.Context, tok string) error {
	r.tok.mu.Lock()
	ok := r.tok.verified != "" && r.tok.verified == tok
	r.tok.mu.Unlock()
	if ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.opts.RequestTimeout)
	defer cancel()
	req := connect.NewRequest(&dalvv1.GetConfigRequest{})
	req.Header().Set("Authorization", "Bearer "+tok)
	resp, err := r.cli.GetConfig(ctx, req)
	if err != nil {
		return fmt.Errorf("get config: %w", err)
	}
	if err := r.setConfig(resp.Msg); err != nil {
		return err
	}
	r.tok.mu.Lock()
	if r.tok.tok == tok {
		r.tok.verified = tok
	}
	r.tok.mu.Unlock()
	return nil
}

// setConfig stores what GetConfig said, binding the replica to the token's
// user on first contact.
func (r *Replica) setConfig(m *dalvv1.GetConfigResponse) error {
	c := configFrom(m)
	if c.user == "" {
		return errors.New("get config: the server named no user for the token")
	}
	r.wmu.Lock()
	defer r.wmu.Unlock()
	r.mu.RLock()
	user, err := r.cfg.user, r.checkOpen()
	r.mu.RUnlock()
	if err != nil {
		return err
	}
	if user != "" && user != c.user {
		return &wrongUserError{token: c.user, replica: user, path: r.path}
	}
	enc, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	err = r.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bktMeta)
		if err := meta.Put(keyConfig, enc); err != nil {
			return err
		}
		return meta.Put(keyUser, []byte(c.user))
	})
	if err != nil {
		return fmt.Errorf("write to replica %s: %w", r.path, err)
	}
	r.mu.Lock()
	r.cfg = c
	r.mu.Unlock()
	return nil
}

// rpcSync sends one Sync request.
func (r *Replica) rpcSync(ctx context.Context, m *dalvv1.SyncRequest) (*dalvv1.SyncResponse, error) {
	var resp *dalvv1.SyncResponse
	err := r.withToken(ctx, func(ctx context.Context, tok string) error {
		ctx, cancel := context.WithTimeout(ctx, r.opts.RequestTimeout)
		defer cancel()
		req := connect.NewRequest(m)
		req.Header().Set("Authorization", "Bearer "+tok)
		res, err := r.cli.Sync(ctx, req)
		if err != nil {
			return err
		}
		resp = res.Msg
		return nil
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}
