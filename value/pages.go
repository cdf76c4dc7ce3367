package value

import dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"

// Pages follows an answer cut into pages (a SyncResponse with more set) the
// way the protocol asks of a device, and of the server's watch that pages
// a catch-up the same way: each next page is asked for from the last page's
// version, echoing as resetHorizon the horizon of the reset being followed,
// so the server goes on with that reset instead of starting it over. The
// sequence is complete at the first page with more unset. The zero Pages is
// ready for the first page.
type Pages struct {
	horizon uint64 // of the last reset page taken; 0 before any
}

// Add takes the next page and reports whether it starts a reset over: a
// reset page whose horizon is not the one echoed (the first reset page, or
// one after the horizon moved meanwhile). What the pages before it gave of
// the partition then no longer counts: the reset sends the whole partition
// again.
func (p *Pages) Add(page *dalvv1.SyncResponse) (restart bool) {
	if !page.GetReset_() {
		return false
	}
	restart = page.GetHorizon() != p.horizon
	p.horizon = page.GetHorizon()
	return restart
}

// ResetHorizon is the resetHorizon to send when asking for the next page.
func (p *Pages) ResetHorizon() uint64 { return p.horizon }
