package engine

import (
	"context"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/store"
	"github.com/dalvdb/dalv/value"
)

// PullPageFunc reads a page as [Engine.PullPage] does. A page it returns
// may be shared with other callers: CatchUp never modifies one.
type PullPageFunc func(ctx context.Context, p store.Partition, base, resetHorizon uint64, pageBytes int) (*dalvv1.SyncResponse, error)

// CatchUp reads what a watch of p missed after from, page by page as
// [Engine.PullPage] cuts them at pageBytes, and hands each page to fn in
// order until a page with more unset, or fn's error, which it returns. It
// follows a reset across pages as a device's pulls do ([value.Pages]), and
// holds one page at a time, so a watch's memory does not grow with the
// partition. Each page's changes are cut to the keys under prefixes (all
// keys when there are none). When nothing came after from, fn is not
// called. It reads each page with pull, or with PullPage when pull is nil;
// fn must not modify the pages.
func (e *Engine) CatchUp(ctx context.Context, pull PullPageFunc, p store.Partition, from uint64, prefixes []string, pageBytes int, fn func(page *dalvv1.SyncResponse) error) error {
	if pull == nil {
		pull = e.PullPage
	}
	var pages value.Pages
	for {
		page, err := pull(ctx, p, from, pages.ResetHorizon(), pageBytes)
		if err != nil {
			return err
		}
		if page.GetVersion() == from && !page.GetReset_() && len(page.GetChanges()) == 0 {
			return nil // nothing new
		}
		pages.Add(page)
		if len(prefixes) > 0 {
			page = &dalvv1.SyncResponse{Status: page.GetStatus(), Version: page.GetVersion(), Horizon: page.GetHorizon(),
				Reset_: page.GetReset_(), More: page.GetMore(), Changes: FilterChanges(page.GetChanges(), prefixes)}
		}
		if err := fn(page); err != nil {
			return err
		}
		if !page.GetMore() {
			return nil
		}
		from = page.GetVersion()
	}
}
