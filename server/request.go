package server

import (
	"context"
	"net/http"

	"github.com/dalvdb/dalv/auth"
)

// requestState is what a request's handlers leave for one another: the
// recorder countRefused wraps the answer in, and the claims authenticate
// verified. withRequestState, the outermost handler, puts it in the
// request's context, so that the request is copied once, there, rather than
// by each handler that has something to add.
type requestState struct {
	rec    refusalRecorder
	claims *auth.Claims
}

type requestStateKey struct{}

// withRequestState gives each request its requestState, in a copy of the
// request: net/http still looks at the request it passed after the
// handler, so handlers inside (limitBodyTime, limitRequestSize) replace the
// copy's body, never the original's.
func withRequestState(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, r = requestStateOf(r)
		next.ServeHTTP(w, r)
	})
}

// requestStateOf returns r's requestState, and r: a copy that carries a
// new state when r came without one (not through routes).
func requestStateOf(r *http.Request) (*requestState, *http.Request) {
	if st := stateOf(r.Context()); st != nil {
		return st, r
	}
	st := &requestState{}
	return st, r.WithContext(context.WithValue(r.Context(), requestStateKey{}, st))
}

// stateOf returns the requestState of the request whose handler has ctx,
// or nil when it came another way.
func stateOf(ctx context.Context) *requestState {
	st, _ := ctx.Value(requestStateKey{}).(*requestState)
	return st
}
