package server

import (
	"github.com/dalvdb/dalv/rules"
)

// SetRules replaces the write rules syncs and commits are checked against
// (nil: none) and that GetConfig tells devices. dalv serve calls it when its
// rules file is reloaded.
func (s *Server) SetRules(r *rules.Set) { s.eng.SetRules(r) }

// RulesHash is the hash of the write rules in force, the system prefixes'
// among them (what GetConfig tells devices); empty when there are none.
func (s *Server) RulesHash() string {
	h, _ := s.rulesConfig()
	return h
}

// rulesConfig is what GetConfig says of the rules in force: their hash and
// their JSON form, both empty when there are none.
func (s *Server) rulesConfig() (hash, source string) {
	r := s.eng.Rules()
	if r == nil {
		return "", ""
	}
	return r.Hash(), string(r.Source())
}
