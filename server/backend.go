package server

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	"github.com/dalvdb/dalv/engine"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
)

// backendService implements dalv.v1.BackendService for trusted services.
// Its requests were authenticated by API key before they got here (see
// authenticate).
type backendService struct {
	dalvv1connect.UnimplementedBackendServiceHandler
	s *Server
}

func (h *backendService) Get(ctx context.Context, req *connect.Request[dalvv1.GetRequest]) (*connect.Response[dalvv1.GetResponse], error) {
	s, m := h.s, req.Msg
	resp, err := func() (*dalvv1.GetResponse, error) {
		p, err := s.backendPartition(m.GetUser(), m.GetShared())
		if err != nil {
			return nil, err
		}
		version, items, err := s.eng.Get(ctx, p, m.GetKeys())
		return &dalvv1.GetResponse{Version: version, Items: items}, err
	}()
	if err != nil {
		return nil, s.toConnect(req.Spec().Procedure, err)
	}
	return connect.NewResponse(resp), nil
}

func (h *backendService) List(ctx context.Context, req *connect.Request[dalvv1.ListRequest]) (*connect.Response[dalvv1.ListResponse], error) {
	s, m := h.s, req.Msg
	resp, err := func() (*dalvv1.ListResponse, error) {
		p, err := s.backendPartition(m.GetUser(), m.GetShared())
		if err != nil {
			return nil, err
		}
		version, items, next, err := s.eng.List(ctx, p, m.GetPrefix(), int(m.GetPageSize()), m.GetPageToken())
		return &dalvv1.ListResponse{Version: version, Items: items, NextPageToken: next}, err
	}()
	if err != nil {
		return nil, s.toConnect(req.Spec().Procedure, err)
	}
	return connect.NewResponse(resp), nil
}

func (h *backendService) Commit(ctx context.Context, req *connect.Request[dalvv1.CommitRequest]) (*connect.Response[dalvv1.CommitResponse], error) {
	s, m := h.s, req.Msg
	resp, err := func() (*dalvv1.CommitResponse, error) {
		p, err := s.backendPartition(m.GetUser(), m.GetShared())
		if err != nil {
			return nil, err
		}
		version, err := s.eng.Commit(ctx, p, m.GetOps(), engine.CommitOptions{
			Expected: m.ExpectedVersion, IdempotencyKey: m.GetIdempotencyKey()})
		return &dalvv1.CommitResponse{Version: version}, err
	}()
	if err != nil {
		return nil, s.toConnect(req.Spec().Procedure, err)
	}
	return connect.NewResponse(resp), nil
}

func (h *backendService) DeletePartition(ctx context.Context, req *connect.Request[dalvv1.DeletePartitionRequest]) (*connect.Response[dalvv1.DeletePartitionResponse], error) {
	s, m := h.s, req.Msg
	resp, err := func() (*dalvv1.DeletePartitionResponse, error) {
		p, err := s.backendPartition(m.GetUser(), m.GetShared())
		if err != nil {
			return nil, err
		}
		version, err := s.eng.DeletePartition(ctx, p)
		return &dalvv1.DeletePartitionResponse{Version: version}, err
	}()
	if err != nil {
		return nil, s.toConnect(req.Spec().Procedure, err)
	}
	return connect.NewResponse(resp), nil
}

// Export streams a partition's keys and values at one version, a page of
// the engine's per message.
func (h *backendService) Export(ctx context.Context, req *connect.Request[dalvv1.ExportRequest], stream *connect.ServerStream[dalvv1.ExportResponse]) error {
	s, m := h.s, req.Msg
	out := s.newStreamOut(ctx)
	defer out.finish()
	err := func() error {
		p, err := s.backendPartition(m.GetUser(), m.GetShared())
		if err != nil {
			return err
		}
		return s.eng.Export(ctx, p, func(version uint64, items []*dalvv1.Change) error {
			return send(out, stream, &dalvv1.ExportResponse{Version: version, Items: items})
		})
	}()
	switch {
	case errors.Is(err, errClientGone):
		return nil
	case errors.Is(err, errTooSlow):
		s.metrics.streamTimeouts.WithLabelValues("export").Inc()
		err = engine.Errorf(errRateLimited, "export reader too slow: a page waited more than %v to be written (--stream-write-timeout); export again", s.cfg.StreamWriteTimeout)
	}
	return s.toConnect(req.Spec().Procedure, err)
}
