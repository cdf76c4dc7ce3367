package pebble

import (
	"encoding/binary"
	"fmt"

	"github.com/dalvdb/dalv/store"
)

// Key layout. Every key starts with a kind byte. A partition id (pid) is
// self-delimiting: a partition kind byte, the name's length as a uvarint, then
// the name. So no partition's keys are a prefix of another's: user "a" never
// meets user "a\x00b", user "ab" or shared "a".
//
//	'h' pid                       -> head: version, horizon, last feed seq, recent devices (see encodeHead)
//	'k' pid key                   -> entry (see encodeEntry)
//	'v' pid be64(version) key     -> empty; Changes walks it in (version, key) order
//	'd' pid device                -> uvarint batch, of a device no longer in the head
//	'i' pid idempotency key       -> key record (see encodeKeyRecord)
//	'I' be64(unix nanos) pid key  -> empty; key records by commit time, for retention
//	't' be64(unix nanos) pid key  -> uvarint version of a tombstone, for retention
//	'f' be64(seq)                 -> feed record, linked to its partition's previous one (see putFeedRecord)
//	'F' pid be64(seq)             -> empty; a feed record written before records were linked, for an erase
//	'm' name                      -> store metadata (metaFeedFloor)
//
// An erase finds its partition's feed records by their links, from the
// head's last feed seq back; records written before the links existed have
// a feed index key ('F') instead, which retention or an erase drops with
// them. Linking costs no key: the head and the record are written anyway.
//
// The tombstone index holds exactly the current tombstones (a commit that
// rewrites a tombstoned key drops its item), and each tombstone records its
// commit time: so an erase finds every key of the partition that names it.
const (
	kindHead      = 'h'
	kindEntry     = 'k'
	kindVersion   = 'v'
	kindDevice    = 'd'
	kindIdemKey   = 'i'
	kindIdemTime  = 'I'
	kindTomb      = 't'
	kindFeed      = 'f'
	kindFeedIndex = 'F'
	kindMeta      = 'm'
)

// Partition kinds inside a pid.
const (
	partUser   = 'u'
	partShared = 's'
)

// metaFeedFloor holds the highest feed seq Compact ever dropped, so a store
// whose feed records were all dropped still never reuses a seq after a
// restart.
var metaFeedFloor = []byte{kindMeta, 'f', 'e', 'e', 'd', 'f', 'l', 'o', 'o', 'r'}

// appendPartition appends p's pid to dst.
func appendPartition(dst []byte, p store.Partition) []byte {
	kind := byte(partUser)
	if p.Shared {
		kind = partShared
	}
	dst = append(dst, kind)
	dst = binary.AppendUvarint(dst, uint64(len(p.Name)))
	return append(dst, p.Name...)
}

// decodePartition reads a pid from the front of b and returns the rest.
func decodePartition(b []byte) (store.Partition, []byte, error) {
	if len(b) == 0 {
		return store.Partition{}, nil, corruptf("partition: empty")
	}
	var p store.Partition
	switch b[0] {
	case partUser:
	case partShared:
		p.Shared = true
	default:
		return store.Partition{}, nil, corruptf("partition: kind %#x", b[0])
	}
	n, w := uvarint(b[1:])
	if w <= 0 {
		return store.Partition{}, nil, corruptf("partition: bad name length")
	}
	b = b[1+w:]
	if n == 0 || n > uint64(len(b)) {
		return store.Partition{}, nil, corruptf("partition: name length %d of %d bytes", n, len(b))
	}
	p.Name = string(b[:n])
	return p, b[n:], nil
}

// appendKey appends kind, pid and suffix: the head, entry and device keys.
func appendKey(dst []byte, kind byte, pid []byte, suffix string) []byte {
	dst = append(dst, kind)
	dst = append(dst, pid...)
	return append(dst, suffix...)
}

// appendVersionKey appends the version index key of key at version.
func appendVersionKey(dst, pid []byte, version uint64, key string) []byte {
	dst = append(dst, kindVersion)
	dst = append(dst, pid...)
	dst = binary.BigEndian.AppendUint64(dst, version)
	return append(dst, key...)
}

// appendTombKey appends the tombstone index key of key, tombstoned at nanos.
func appendTombKey[K string | []byte](dst []byte, nanos uint64, pid []byte, key K) []byte {
	dst = append(dst, kindTomb)
	dst = binary.BigEndian.AppendUint64(dst, nanos)
	dst = append(dst, pid...)
	return append(dst, key...)
}

// appendFeedIndexKey appends the partition feed index key of the feed
// record seq of pid.
func appendFeedIndexKey(dst, pid []byte, seq uint64) []byte {
	dst = append(dst, kindFeedIndex)
	dst = append(dst, pid...)
	return binary.BigEndian.AppendUint64(dst, seq)
}

// feedKey is the key of the feed record seq.
func feedKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{kindFeed}, seq)
}

// decodeFeedKey returns the seq of a feed record key.
func decodeFeedKey(k []byte) (uint64, error) {
	if len(k) != 9 || k[0] != kindFeed {
		return 0, corruptf("feed key %x", k)
	}
	return binary.BigEndian.Uint64(k[1:]), nil
}

// decodeTombKey splits a tombstone index key into its time, partition and key.
func decodeTombKey(k []byte) (nanos uint64, p store.Partition, key string, err error) {
	if len(k) < 9 || k[0] != kindTomb {
		return 0, p, "", corruptf("tombstone index key %x", k)
	}
	nanos = binary.BigEndian.Uint64(k[1:9])
	p, rest, err := decodePartition(k[9:])
	if err != nil {
		return 0, p, "", fmt.Errorf("tombstone index key: %w", err)
	}
	if len(rest) == 0 {
		return 0, p, "", corruptf("tombstone index key %x: empty key", k)
	}
	return nanos, p, string(rest), nil
}

// appendIdemTimeKey appends the retention index key of the idempotency key
// record of key, made at nanos.
func appendIdemTimeKey(dst []byte, nanos uint64, pid []byte, key string) []byte {
	dst = append(dst, kindIdemTime)
	dst = binary.BigEndian.AppendUint64(dst, nanos)
	dst = append(dst, pid...)
	return append(dst, key...)
}

// decodeIdemTimeKey splits a retention index key of key records into its
// partition's pid and the idempotency key.
func decodeIdemTimeKey(k []byte) (pid []byte, key string, err error) {
	if len(k) < 9 || k[0] != kindIdemTime {
		return nil, "", corruptf("key record index key %x", k)
	}
	_, rest, err := decodePartition(k[9:])
	if err != nil {
		return nil, "", fmt.Errorf("key record index key: %w", err)
	}
	if len(rest) == 0 {
		return nil, "", corruptf("key record index key %x: empty key", k)
	}
	return k[9 : len(k)-len(rest)], string(rest), nil
}
