package pebble

import (
	pebbledb "github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
)

// dbOptions returns the Pebble options [Open] opens its database with for
// opts, its defaults filled in: the block cache and memtable sizes, the
// newest format, bloom filters, Pebble's messages routed to opts.Logger and
// data corruption reported there rather than exiting. [Open] adds its
// directory lock and opts.FS.
func dbOptions(opts Options) *pebbledb.Options {
	popts := &pebbledb.Options{
		// Pebble charges memtables to its cache: reserve room for the two it
		// may hold (one filling, one flushing) on top of the block cache.
		CacheSize:          opts.CacheSize + 2*opts.MemTableSize,
		MemTableSize:       uint64(opts.MemTableSize),
		FormatMajorVersion: pebbledb.FormatNewest,
		Logger:             slogLogger{l: opts.Logger},
		EventListener: &pebbledb.EventListener{
			// Pebble's default is to exit; reads of damaged data fail with
			// errors that wrap store.ErrCorruption instead.
			DataCorruption: func(info pebbledb.DataCorruptionInfo) {
				opts.Logger.Error("pebble: data corruption", "info", info.String())
			},
		},
	}
	// Most lookups are point Gets (heads, devices, keys), many of keys not
	// there yet: bloom filters (inherited by every level) spare their reads.
	popts.Levels[0].FilterPolicy = bloom.FilterPolicy(10)
	// Flushes and compactions end an output table at the end of each key
	// kind (keys.go), so that the feed, appended in seq order, never shares
	// a table with the heads, entries and indexes updated all over their
	// ranges: compacting those no longer rewrites the feed's tables. Over
	// 600,000 commits of BenchmarkUpdateParallel, the bytes compacted into
	// the base level fell from 7.4–7.7 times those flushed to 4.3.
	popts.Experimental.SpanPolicyFunc = splitByKind
	return popts
}

// splitByKind is a pebble.SpanPolicyFunc: Pebble's default policy, in
// spans that end where the key kind (a key's first byte) does.
func splitByKind(start []byte) (pebbledb.SpanPolicy, []byte, error) {
	if len(start) == 0 || start[0] == 0xff {
		return pebbledb.SpanPolicy{}, nil, nil
	}
	return pebbledb.SpanPolicy{}, []byte{start[0] + 1}, nil
}
