// Package client is DalvDB's Go SDK: the replica of a user's data that an
// application keeps on the device, reads and writes locally (offline too),
// and syncs with a DalvDB server.
//
// A [Replica] lives in one file (a bbolt database) holding the synced
// values with their versions, the partition versions, the pending local
// writes, the device id, what the server said of its domains and limits,
// the conflicts deferred for the application, and the batches the server
// refused.
//
//	r, err := client.Open("app.replica", client.Options{
//		ServerURL:   "http://127.0.0.1:7070",
//		TokenSource: func(ctx context.Context) (string, error) { return myToken(ctx) },
//		Resolver:    client.MergeJSON,
//	})
//	...
//	r.Start(ctx)                       // sync in the background
//	r.PutJSON("prefs/theme", "dark")   // durable at once, synced soon
//	r.GetJSON("prefs/theme", &theme)   // local, microseconds
//
// # Guarantees
//
//   - Reads are local and see the device's own pending writes: the synced
//     value with the pending ops applied, list semantics as on the server
//     (package value, shared with it).
//   - A write returns only once it is durable in the file (an fsynced bbolt
//     transaction). A crash at any instant loses no write whose call
//     returned, and never leaves part of a transaction.
//   - [Replica.Update] is a transaction: its writes apply on the device
//     together, and reach the server together as one commit; they are never
//     split. Separate writes made offline may be merged into one request, in
//     order; a merged request the server refuses goes up again write by
//     write, so only the refused one is set aside.
//   - Writes the server would refuse for their key or size are refused
//     locally with an error naming the key and the reason: system-domain
//     keys ([ErrSystemKey]), shared partitions ([ErrReadOnly]), the limits
//     ([ErrLimit]). The device knows the server's prefixes and limits from
//     its first contact on; before, the defaults ("sys/", 1 MiB values, 1000
//     ops).
//   - Pending batches go up in order, each with its batch number, so a retry
//     after a lost answer never applies a batch twice. Pulls continue until
//     the server says there is no more, and only then is the new state
//     exposed, all at once; a reset replaces the state.
//   - No remote change to a key with pending local ops is overwritten or
//     dropped without the [Resolver] seeing it, whether it came by a sync or
//     by the watch: a watched change to such a key does not replace what
//     reads show; it is held as the remote side, and the next sync sends a
//     base version that makes the server report the key as a conflict.
//   - A batch the server refuses for another reason than a conflict is set
//     aside durably ([Replica.Refused], [Options.OnRefused]) and the batches
//     after it go on. A conflict the resolver defers waits in a durable inbox
//     ([Replica.Conflicts], [Replica.Settle]) while other keys keep syncing;
//     for JSON objects the inbox names the conflicting fields, and
//     [Replica.SettleFields] settles those alone, keeping every field
//     nobody conflicted on.
//   - [Replica.Status] is online only after a successful exchange with the
//     server and keeps why the last sync failed as a [SyncError] with a
//     [ErrorKind]; [Replica.WaitSynced] waits until the writes made before
//     it are on the server.
//   - A token for another user than the one whose data the file holds is
//     refused ([ErrWrongUser]); an unauthenticated answer makes the replica
//     ask the [Options.TokenSource] again and retry once.
//   - A damaged file (truncated, overwritten, bad pages) never crashes the
//     process: [Open] checks its pages first and returns [ErrCorrupt], or,
//     with [Options.OnCorrupt], sets it aside and starts afresh with the
//     pending writes it could read ([CorruptReport]).
//
// # Caveats
//
//   - One process at a time: a second [Open] of the file fails with
//     [ErrLocked].
//   - The protocol sends one base version per batch. When a batch holds
//     ops on several keys of which some have unseen remote changes, the
//     base sent is the lowest the keys need, and the server may then also
//     flag a key whose change the device had seen. The replica recognises
//     those (they never reach the resolver) and sends again; a batch takes
//     at most [Options.MaxConflictRounds] rounds per sync.
//   - A server that lost its data (the device's version is ahead of it) is
//     taken as the truth: the device takes its state again, keeping its
//     pending writes.
//   - bbolt keeps no checksums of its pages: damage inside a value's bytes
//     is found only where the replica's own decoding fails, and a damaged
//     newest meta page makes bbolt (and the check) fall back to the
//     transaction before it.
//   - The replica's own queues are bounded. A subscription queues at most
//     [Options.MaxSubscriberQueue] changes while its callback runs; a
//     subscriber that falls further behind gets, in place of the queued
//     changes, one [Change] with Overflow set, and reads the prefix again
//     (changes are states, not deltas, so nothing else is lost). A local
//     write wakes the sync loop through a channel of one slot: writes made
//     while a wake-up is pending coalesce into it.
//   - Values returned by reads belong to the caller; values in a [Change]
//     and a [Conflict] are shared with other receivers and must not be
//     modified.
//
// # Locks
//
// A Replica's locks are taken in this order: the sync lock (one exchange
// with the server at a time), the write lock (one writer of the file at a
// time), then the state lock (readers share it). Subscriptions and the
// status have leaf locks of their own.
package client
