package main

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// rulesPeers is a store shared by several nodes that records each node's
// rules hash: the PostgreSQL store.
type rulesPeers interface {
	PeerRules(ctx context.Context, hash string, live time.Duration) (map[string]string, error)
}

// peerRules compares the write rules this node enforces with those of the
// other nodes over the same database. Nodes behind one load balancer must
// enforce the same rules, or a write refused by one is taken by another:
// when a live peer's hash differs, it logs a warning (once for each
// change) and sets dalv_rules_peer_mismatch to 1.
type peerRules struct {
	store    rulesPeers
	hash     func() string // of the rules in force, empty for none
	log      *slog.Logger
	mismatch prometheus.Gauge
	nodes    *prometheus.GaugeVec // by hash
	differ   string               // the peers that differed at the last check, as logged
	failing  bool                 // the last check failed
}

func newPeerRules(st rulesPeers, hash func() string, reg prometheus.Registerer, log *slog.Logger) *peerRules {
	p := &peerRules{store: st, hash: hash, log: log,
		mismatch: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dalv_rules_peer_mismatch",
			Help: "1 when a live node over the same database enforces other write rules than this one, else 0.",
		}),
		nodes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dalv_rules_nodes",
			Help: "Live nodes over the same database, this one included, by the hash of the write rules each enforces (none: no rules).",
		}, []string{"hash"}),
	}
	reg.MustRegister(p.mismatch, p.nodes)
	return p
}

// run checks every interval until ctx ends. A node counts as live while it
// checked within the last three intervals.
func (p *peerRules) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		p.check(ctx, 3*every)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// check records this node's hash, reads its peers', and reports a change.
func (p *peerRules) check(ctx context.Context, live time.Duration) {
	mine := p.hash()
	peers, err := p.store.PeerRules(ctx, mine, live)
	if err != nil {
		if !p.failing && ctx.Err() == nil {
			p.log.Warn("cannot compare the write rules with other nodes'", "err", err)
		}
		p.failing = true
		return
	}
	p.failing = false
	count := map[string]float64{hashLabel(mine): 1}
	var differ []string
	for node, h := range peers {
		count[hashLabel(h)]++
		if h != mine {
			differ = append(differ, node+"="+hashLabel(h))
		}
	}
	slices.Sort(differ)
	p.nodes.Reset()
	for h, n := range count {
		p.nodes.WithLabelValues(h).Set(n)
	}
	if len(differ) > 0 {
		p.mismatch.Set(1)
	} else {
		p.mismatch.Set(0)
	}
	now := strings.Join(differ, " ")
	switch {
	case now == p.differ:
	case now != "":
		p.log.Warn("nodes over this database enforce other write rules than this one: give every node the same rules file",
			"hash", hashLabel(mine), "peers", now)
	default:
		p.log.Info("every node over this database enforces the same write rules", "hash", hashLabel(mine))
	}
	p.differ = now
}

// hashLabel is a rules hash as metrics and logs show it.
func hashLabel(h string) string {
	if h == "" {
		return "none"
	}
	return h
}
