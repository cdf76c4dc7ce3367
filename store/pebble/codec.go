package pebble

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/dalvdb/dalv/store"
)

// Entry encoding: flags byte, uvarint version, uvarint scalar version; for
// a tombstone with entryTimed, uvarint unix nanos of its commit; then the
// value bytes to the end (none for a tombstone). The time names the
// tombstone's index key, so that an erase finds and drops it. Every
// tombstone the store writes carries it; the decoder also accepts a
// tombstone with entryTimed clear, which decodes to an untimed header.
const (
	entryDeleted = 1 << 0
	entryTimed   = 1 << 1
)

// entryHeader is an encoded entry without its value.
type entryHeader struct {
	deleted         bool
	version, scalar uint64
	// timed is set for a tombstone that records nanos, its commit time in
	// Unix nanoseconds, as its tombstone index key does.
	timed bool
	nanos uint64
}

// headerOf is the header written for e, committed at nanos.
func headerOf(e *store.Entry, nanos uint64) entryHeader {
	return entryHeader{deleted: e.Deleted, version: e.Version, scalar: e.ScalarVersion, timed: e.Deleted, nanos: nanos}
}

// len is the encoded length of h.
func (h *entryHeader) len() int {
	n := 1 + uvarintLen(h.version) + uvarintLen(h.scalar)
	if h.timed {
		n += uvarintLen(h.nanos)
	}
	return n
}

// put encodes h into dst, which is at least h.len() bytes long, and returns
// h.len().
func (h *entryHeader) put(dst []byte) int {
	var flags byte
	if h.deleted {
		flags |= entryDeleted
	}
	if h.timed {
		flags |= entryTimed
	}
	dst[0] = flags
	n := 1 + binary.PutUvarint(dst[1:], h.version)
	n += binary.PutUvarint(dst[n:], h.scalar)
	if h.timed {
		n += binary.PutUvarint(dst[n:], h.nanos)
	}
	return n
}

// entryLen is the encoded length of e, committed at nanos.
func entryLen(e *store.Entry, nanos uint64) int {
	h := headerOf(e, nanos)
	if e.Deleted {
		return h.len()
	}
	return h.len() + len(e.Value)
}

// putEntry encodes e, committed at nanos, into dst, which is exactly
// entryLen(e, nanos) bytes long.
func putEntry(dst []byte, e *store.Entry, nanos uint64) {
	h := headerOf(e, nanos)
	n := h.put(dst)
	if !e.Deleted {
		copy(dst[n:], e.Value)
	}
}

// decodeEntryHeader reads an encoded entry's header, and returns the offset
// of its value.
func decodeEntryHeader(b []byte) (h entryHeader, n int, err error) {
	if len(b) == 0 {
		return h, 0, corruptf("entry: empty")
	}
	flags := b[0]
	if flags&^(entryDeleted|entryTimed) != 0 || flags&entryTimed != 0 && flags&entryDeleted == 0 {
		return h, 0, corruptf("entry: flags %#x", flags)
	}
	h.deleted = flags&entryDeleted != 0
	h.timed = flags&entryTimed != 0
	n = 1
	var w int
	h.version, w = uvarint(b[n:])
	if w <= 0 {
		return entryHeader{}, 0, corruptf("entry: bad version")
	}
	n += w
	h.scalar, w = uvarint(b[n:])
	if w <= 0 {
		return entryHeader{}, 0, corruptf("entry: bad scalar version")
	}
	n += w
	if h.timed {
		h.nanos, w = uvarint(b[n:])
		if w <= 0 || h.nanos > 1<<63-1 {
			return entryHeader{}, 0, corruptf("entry: bad time")
		}
		n += w
	}
	if h.deleted && n != len(b) {
		return entryHeader{}, 0, corruptf("entry: tombstone with %d value bytes", len(b)-n)
	}
	return h, n, nil
}

// decodeEntry decodes the entry of key from b, copying its value: b belongs
// to Pebble and is only valid until the next iterator step.
func decodeEntry(key string, b []byte) (store.Entry, entryHeader, error) {
	h, n, err := decodeEntryHeader(b)
	if err != nil {
		return store.Entry{}, h, err
	}
	e := store.Entry{Key: key, Deleted: h.deleted, Version: h.version, ScalarVersion: h.scalar}
	if !h.deleted {
		e.Value = append(make([]byte, 0, len(b)-n), b[n:]...)
	}
	return e, h, nil
}

// maxHeadDevices bounds the devices whose last batch a partition's head
// keeps: its most recent writers, latest first. Their commits then read and
// write no device record of their own; a device pushed out of the head gets
// one (kindDevice), which the head's entry overrides while it has one.
const maxHeadDevices = 4

// encodeHead appends a head record to dst: uvarint version, uvarint
// horizon, then, when feedSeq is not 0, a zero byte and uvarint feedSeq (the
// seq of the partition's last feed record), then devs, the head's devices
// (see appendHeadDevice). A device's id is never empty, so the zero byte
// cannot start a device, and heads written before feedSeq existed decode
// with feedSeq 0.
func encodeHead(dst []byte, h store.Head, feedSeq uint64, devs []byte) []byte {
	dst = binary.AppendUvarint(dst, h.Version)
	dst = binary.AppendUvarint(dst, h.Horizon)
	if feedSeq != 0 {
		dst = append(dst, 0)
		dst = binary.AppendUvarint(dst, feedSeq)
	}
	return append(dst, devs...)
}

// headLen is the length encodeHead appends.
func headLen(h store.Head, feedSeq uint64, devs []byte) int {
	n := uvarintLen(h.Version) + uvarintLen(h.Horizon) + len(devs)
	if feedSeq != 0 {
		n += 1 + uvarintLen(feedSeq)
	}
	return n
}

// decodeHead decodes a head record into the head, its last feed seq and
// its devices, which alias b.
func decodeHead(b []byte) (h store.Head, feedSeq uint64, devs []byte, err error) {
	var w int
	h.Version, w = uvarint(b)
	if w <= 0 {
		return store.Head{}, 0, nil, corruptf("head: bad version")
	}
	var w2 int
	h.Horizon, w2 = uvarint(b[w:])
	if w2 <= 0 {
		return store.Head{}, 0, nil, corruptf("head: bad horizon")
	}
	if h.Horizon > h.Version {
		return store.Head{}, 0, nil, corruptf("head: horizon %d above version %d", h.Horizon, h.Version)
	}
	devs = b[w+w2:]
	if len(devs) > 0 && devs[0] == 0 {
		var w3 int
		feedSeq, w3 = uvarint(devs[1:])
		if w3 <= 0 || feedSeq == 0 { // 0 is written as no field at all
			return store.Head{}, 0, nil, corruptf("head: bad feed seq")
		}
		devs = devs[1+w3:]
	}
	for n, rest := 0, devs; len(rest) > 0; n++ {
		// More would be dropped unrecorded by the next commit's
		// withHeadDevice, which keeps maxHeadDevices.
		if n == maxHeadDevices {
			return store.Head{}, 0, nil, corruptf("head: over %d devices", maxHeadDevices)
		}
		if _, _, rest, err = nextHeadDevice(rest); err != nil {
			return store.Head{}, 0, nil, err
		}
	}
	return h, feedSeq, devs, nil
}

// appendHeadDevice appends a head's device: uvarint length, the id, then
// uvarint batch.
func appendHeadDevice[K string | []byte](dst []byte, id K, batch uint64) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(id)))
	dst = append(dst, id...)
	return binary.AppendUvarint(dst, batch)
}

// nextHeadDevice decodes the first of a head's devices and returns the rest.
func nextHeadDevice(devs []byte) (id []byte, batch uint64, rest []byte, err error) {
	n, w := uvarint(devs)
	if w <= 0 || n == 0 || n > uint64(len(devs)-w) {
		return nil, 0, nil, corruptf("head: bad device id length")
	}
	id, rest = devs[w:w+int(n)], devs[w+int(n):]
	batch, w = uvarint(rest)
	if w <= 0 {
		return nil, 0, nil, corruptf("head: device %q: bad batch", id)
	}
	return id, batch, rest[w:], nil
}

// headDeviceBatch returns device's batch from a head's devices, and whether
// the head has it. devs must have been checked by decodeHead.
func headDeviceBatch(devs []byte, device string) (uint64, bool) {
	for len(devs) > 0 {
		id, batch, rest, _ := nextHeadDevice(devs)
		if string(id) == device {
			return batch, true
		}
		devs = rest
	}
	return 0, false
}

// withHeadDevice appends to dst a head's devices with device's batch first
// and its older place dropped. It returns the device pushed out past
// maxHeadDevices (nil for none) and its batch. devs must have been checked
// by decodeHead.
func withHeadDevice(dst, devs []byte, device string, batch uint64) (out, pushed []byte, pushedBatch uint64) {
	dst = appendHeadDevice(dst, device, batch)
	kept := 1
	for len(devs) > 0 {
		id, b, rest, _ := nextHeadDevice(devs)
		devs = rest
		if string(id) == device {
			continue
		}
		if kept == maxHeadDevices {
			return dst, id, b
		}
		dst = appendHeadDevice(dst, id, b)
		kept++
	}
	return dst, nil, 0
}

// encodeKeyRecord appends an idempotency key record: uvarint version,
// uvarint commit time in Unix nanoseconds, then the digest.
func encodeKeyRecord(dst []byte, version, nanos uint64, digest []byte) []byte {
	dst = binary.AppendUvarint(dst, version)
	dst = binary.AppendUvarint(dst, nanos)
	return append(dst, digest...)
}

// decodeKeyRecord decodes an idempotency key record; the digest is copied.
func decodeKeyRecord(b []byte) (store.KeyRecord, error) {
	v, w := uvarint(b)
	if w <= 0 {
		return store.KeyRecord{}, corruptf("key record: bad version")
	}
	_, w2 := uvarint(b[w:])
	if w2 <= 0 {
		return store.KeyRecord{}, corruptf("key record: bad time")
	}
	return store.KeyRecord{Version: v, Digest: bytes.Clone(b[w+w2:])}, nil
}

// decodeUvarint decodes a value that is exactly one uvarint: device batches
// and tombstone index versions.
func decodeUvarint(b []byte) (uint64, error) {
	v, w := uvarint(b)
	if w <= 0 || w != len(b) {
		return 0, corruptf("uvarint %x", b)
	}
	return v, nil
}

// feedRecord is one commit as the change feed keeps it.
type feedRecord struct {
	Partition store.Partition
	Version   uint64
	// Nanos is the commit's time in Unix nanoseconds, clamped at 0.
	Nanos int64
	Erase bool
	// Linked is set on every record this store writes: Prev links it to
	// its partition's previous record, and it has no feed index key.
	// Records written before the links existed have a feed index key
	// ('F') instead.
	Linked bool
	// Prev is the seq of the partition's feed record before this one; 0
	// for none (the partition's first, or an erase's, which follows none
	// it kept). An erase follows these links to drop the partition's
	// records, and the head keeps the last one's seq.
	Prev uint64
	Ops  []byte
}

// Time is the commit's time.
func (r *feedRecord) Time() time.Time { return time.Unix(0, r.Nanos) }

// Feed record encoding: flags byte, uvarint version, uvarint unix nanos,
// uvarint prev (only with feedLinked), uvarint name length, name, then the
// ops bytes to the end. Time comes before the name so that Compact reads
// it without decoding the rest.
const (
	feedErase  = 1 << 0
	feedShared = 1 << 1
	feedLinked = 1 << 2
)

// feedRecordLen is the encoded length of r.
func feedRecordLen(r *feedRecord) int {
	n := 1 + uvarintLen(r.Version) + uvarintLen(uint64(r.Nanos)) +
		uvarintLen(uint64(len(r.Partition.Name))) + len(r.Partition.Name) + len(r.Ops)
	if r.Linked {
		n += uvarintLen(r.Prev)
	}
	return n
}

// putFeedRecord encodes r into dst, which is exactly feedRecordLen(r) bytes.
func putFeedRecord(dst []byte, r *feedRecord) {
	var flags byte
	if r.Erase {
		flags |= feedErase
	}
	if r.Partition.Shared {
		flags |= feedShared
	}
	if r.Linked {
		flags |= feedLinked
	}
	dst[0] = flags
	n := 1 + binary.PutUvarint(dst[1:], r.Version)
	n += binary.PutUvarint(dst[n:], uint64(r.Nanos))
	if r.Linked {
		n += binary.PutUvarint(dst[n:], r.Prev)
	}
	n += binary.PutUvarint(dst[n:], uint64(len(r.Partition.Name)))
	n += copy(dst[n:], r.Partition.Name)
	copy(dst[n:], r.Ops)
}

// decodeFeedTime reads only the commit time of an encoded feed record.
func decodeFeedTime(b []byte) (int64, error) {
	if len(b) == 0 || b[0]&^(feedErase|feedShared|feedLinked) != 0 {
		return 0, corruptf("feed record: bad flags")
	}
	_, w := uvarint(b[1:])
	if w <= 0 {
		return 0, corruptf("feed record: bad version")
	}
	nanos, w2 := uvarint(b[1+w:])
	if w2 <= 0 || nanos > 1<<63-1 {
		return 0, corruptf("feed record: bad time")
	}
	return int64(nanos), nil
}

// decodeFeedHeader decodes a feed record but its ops, and returns the
// offset of its ops.
func decodeFeedHeader(b []byte) (feedRecord, int, error) {
	var r feedRecord
	nanos, err := decodeFeedTime(b)
	if err != nil {
		return r, 0, err
	}
	r.Nanos = nanos
	r.Erase = b[0]&feedErase != 0
	r.Partition.Shared = b[0]&feedShared != 0
	r.Linked = b[0]&feedLinked != 0
	n := 1
	var w int
	r.Version, w = uvarint(b[n:])
	n += w
	_, w = uvarint(b[n:])
	n += w
	if r.Linked {
		r.Prev, w = uvarint(b[n:])
		if w <= 0 {
			return feedRecord{}, 0, corruptf("feed record: bad prev")
		}
		n += w
	}
	nameLen, w := uvarint(b[n:])
	if w <= 0 {
		return feedRecord{}, 0, corruptf("feed record: bad name length")
	}
	n += w
	if nameLen == 0 || nameLen > uint64(len(b)-n) {
		return feedRecord{}, 0, corruptf("feed record: name length %d of %d bytes", nameLen, len(b)-n)
	}
	r.Partition.Name = string(b[n : n+int(nameLen)])
	n += int(nameLen)
	return r, n, nil
}

// decodeFeedRecord decodes a feed record, copying its ops.
func decodeFeedRecord(b []byte) (feedRecord, error) {
	r, n, err := decodeFeedHeader(b)
	if err != nil {
		return r, err
	}
	r.Ops = append([]byte(nil), b[n:]...)
	return r, nil
}

// uvarintLen is the encoded length of v as a uvarint.
func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// corruptf returns an error wrapping store.ErrCorruption.
func corruptf(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), store.ErrCorruption)
}

// uvarint decodes a uvarint from the front of b like binary.Uvarint, and
// also refuses a non-minimal encoding, so each value has exactly one: a
// decoded record re-encodes to the same bytes.
func uvarint(b []byte) (uint64, int) {
	v, n := binary.Uvarint(b)
	if n <= 0 || n != uvarintLen(v) {
		return 0, -1
	}
	return v, n
}
