package server

import (
	"context"
	"net/http"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"

	"github.com/dalvdb/dalv/store"
)

// storeFailure is the store's failure when it is a [store.Checker] that
// reports one (the embedded store after a write to disk failed, for good; a
// Citus cluster with a node committing asynchronously, until mended), or
// nil.
func (s *Server) storeFailure() error {
	if c, ok := s.cfg.Store.(store.Checker); ok {
		return c.Healthy()
	}
	return nil
}

// healthz answers GET /healthz: 200 "ok", or 503 with the reason while
// draining or while the store reports a failure.
func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	if s.draining.Load() {
		http.Error(w, "draining", http.StatusServiceUnavailable)
		return
	}
	if err := s.storeFailure(); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}

// healthChecker is the gRPC health check: the static status (NOT_SERVING
// while draining), and NOT_SERVING for every service once the store has
// failed.
type healthChecker struct {
	s      *Server
	static *grpchealth.StaticChecker
}

func (h healthChecker) Check(ctx context.Context, req *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	resp, err := h.static.Check(ctx, req)
	if err == nil && h.s.storeFailure() != nil {
		resp.Status = grpchealth.StatusNotServing
	}
	return resp, err
}

// failedStore refuses every call of the dalv services with unavailable and
// the store's failure while the store reports one, before the call reaches
// the engine: the server acknowledges nothing it could not keep (after a
// disk failure, until it is restarted).
type failedStore struct{ s *Server }

func (i failedStore) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if err := i.s.storeFailure(); err != nil {
			return nil, i.s.toConnect(req.Spec().Procedure, err)
		}
		return next(ctx, req)
	}
}

func (i failedStore) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i failedStore) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if err := i.s.storeFailure(); err != nil {
			return i.s.toConnect(conn.Spec().Procedure, err)
		}
		return next(ctx, conn)
	}
}
