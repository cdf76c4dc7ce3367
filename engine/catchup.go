package engine

import (
	"context"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/store"
	"github.com/dalvdb/dalv/value"
)

// CatchUp reads what a watch of p missed after from, page by page as
// [Engine.PullPage] cuts them at pageBytes, and hands each page to fn in
// order until a page with more unset, or fn's error, which it returns. It
// follows a reset across pages as a device's pulls do ([value.Pages]), and
// holds one page at a time, so a watch's memory does not grow with the
// partition. Each page's changes are cut to the keys under prefixes (all
// keys when there are none). When nothing came after from, fn is not
// called.
func (e *Engine) CatchUp(ctx context.Context, p store.Partition, from uint64, prefixes []string, pageBytes int, fn func(page *dalvv1.SyncResponse) error) error {
	var pages value.Pages
	for {
		page, err := e.PullPage(ctx, p, from, pages.ResetHorizon(), pageBytes)
		if err != nil {
			return err
		}
		if page.GetVersion() == from && !page.GetReset_() && len(page.GetChanges()) == 0 {
			return nil // nothing new
		}
		pages.Add(page)
		page.Changes = FilterChanges(page.GetChanges(), prefixes)
		if err := fn(page); err != nil {
			return err
		}
		if !page.GetMore() {
			return nil
		}
		from = page.GetVersion()
	}
}
