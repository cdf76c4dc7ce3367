package server

import (
	"context"

	"connectrpc.com/connect"

	"github.com/dalvdb/dalv/engine"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
)

// clientService implements dalv.v1.ClientService for devices.
type clientService struct {
	dalvv1connect.UnimplementedClientServiceHandler
	s *Server
}

func (h *clientService) GetConfig(ctx context.Context, req *connect.Request[dalvv1.GetConfigRequest]) (*connect.Response[dalvv1.GetConfigResponse], error) {
	s := h.s
	claims, err := s.device(ctx, req.Header())
	if err != nil {
		return nil, s.toConnect(req.Spec().Procedure, err)
	}
	lim := s.eng.Limits()
	rulesHash, rulesSource := s.rulesConfig()
	return connect.NewResponse(&dalvv1.GetConfigResponse{
		SystemPrefixes:   s.eng.SystemPrefixes(),
		SharedPartitions: s.readableShared(claims),
		MaxKeyBytes:      uint32(lim.MaxKeyBytes),
		MaxValueBytes:    uint32(lim.MaxValueBytes),
		MaxOps:           uint32(lim.MaxOps),
		MaxRequestBytes:  uint32(s.cfg.MaxRequestBytes),
		MaxResponseBytes: uint32(lim.MaxResponseBytes),
		User:             claims.Subject,
		RulesHash:        rulesHash,
		Rules:            rulesSource,
	}), nil
}

func (h *clientService) Sync(ctx context.Context, req *connect.Request[dalvv1.SyncRequest]) (*connect.Response[dalvv1.SyncResponse], error) {
	s := h.s
	resp, err := s.sync(ctx, req)
	if err != nil {
		return nil, s.toConnect(req.Spec().Procedure, err)
	}
	if resp.GetStatus() == dalvv1.SyncStatus_SYNC_STATUS_CONFLICT {
		s.metrics.conflicts.Inc()
	}
	return connect.NewResponse(resp), nil
}

func (s *Server) sync(ctx context.Context, req *connect.Request[dalvv1.SyncRequest]) (*dalvv1.SyncResponse, error) {
	claims, err := s.device(ctx, req.Header())
	if err != nil {
		return nil, err
	}
	m := req.Msg
	p, err := s.devicePartition(claims, m.GetShared())
	if err != nil {
		return nil, err
	}
	return s.eng.Sync(ctx, engine.SyncRequest{
		Partition:    p,
		DeviceID:     m.GetDeviceId(),
		BaseVersion:  m.GetBaseVersion(),
		Batch:        m.GetBatch(),
		Ops:          m.GetOps(),
		ResetHorizon: m.GetResetHorizon(),
		Claims:       claims.Raw,
	})
}
