package postgres

// The statements that write a commit, in an Update's own transaction
// (update.go) and in a group's statement (group.go), are built from these
// fragments: both write a commit's rows the same way.
const (
	// xactID is the transaction's id, as a feed key: the id above the
	// timeline's base (see timelineBase).
	xactID = `(pg_current_xact_id()::text::bigint + ` + timelineBase + `)`

	// timelineBase is the base of the feed keys the server writes now: its
	// WAL timeline times 2^48. A promoted standby (or a restored backup)
	// writes on a new timeline, and it gives out again the transaction ids
	// of the old primary's transactions it never received; with the
	// timeline above them, every key written after a failover is above
	// every key written before it, so a feed reader that resumes from a
	// cursor the old primary gave misses no commit of the new one. (Ids
	// would have to run back by 2^48 for that to fail. The timeline is the
	// first part of the name of the WAL file being written; from timeline
	// 32,768 on the key is out of bigint's range, and a commit fails rather
	// than write a key out of order.)
	timelineBase = `(('x' || left(pg_walfile_name(pg_current_wal_lsn()), 8))::bit(32)::bigint * 281474976710656)`

	// insertDevices, then a SELECT of (part, device, batch), then
	// onDevice, records devices' last batches.
	insertDevices = `INSERT INTO dalv_devices (part, device, batch) `
	onDevice      = `
	ON CONFLICT (part, device) DO UPDATE SET batch = EXCLUDED.batch`

	// insertEntries, then a SELECT of (part, key, version, scalar_version,
	// value, tomb_nanos) over the entries t(k, sv, v, del), then onEntry,
	// writes a commit's entries: entryValue and entryTomb are the value and
	// the tombstone's time of the entry t.
	insertEntries = `INSERT INTO dalv_entries (part, key, version, scalar_version, value, tomb_nanos) `
	entryValue    = `CASE WHEN t.del THEN NULL ELSE COALESCE(t.v, '\x'::bytea) END`
	onEntry       = `
	ON CONFLICT (part, key) DO UPDATE SET version = EXCLUDED.version, scalar_version = EXCLUDED.scalar_version,
		value = EXCLUDED.value, tomb_nanos = EXCLUDED.tomb_nanos`

	// insertFeed, then VALUES or a SELECT, writes a commit's feed row.
	insertFeed = `INSERT INTO dalv_feed (part, feed_key, version, nanos, erase, ops) `
)

// entryTomb is the tombstone time of the entry t: nanos when it is deleted.
func entryTomb(nanos string) string { return `CASE WHEN t.del THEN ` + nanos + ` END` }

// nextFeedKey is the feed key of a commit to the partition whose head row
// is head: at least the transaction's id, and above the partition's last
// key, so the partition's records come in version order.
func nextFeedKey(head string) string {
	return `GREATEST(` + xactID + `, ` + head + `.feed_key + 1)`
}
