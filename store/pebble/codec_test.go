package pebble

import (
	"bytes"
	"errors"
	"math"
	"testing"

	"github.com/dalvdb/dalv/store"
)

func encodeEntry(e store.Entry) []byte {
	b := make([]byte, entryLen(&e))
	putEntry(b, &e)
	return b
}

func encodeFeedRecord(r feedRecord) []byte {
	b := make([]byte, feedRecordLen(&r))
	putFeedRecord(b, &r)
	return b
}

func TestEntryRoundTrip(t *testing.T) {
	for _, e := range []store.Entry{
		{Key: "k", Value: []byte("v"), Version: 1, ScalarVersion: 1},
		{Key: "k", Value: []byte{}, Version: 300, ScalarVersion: 0},
		{Key: "k", Deleted: true, Version: math.MaxUint64, ScalarVersion: math.MaxUint64},
		{Key: "k", Value: bytes.Repeat([]byte{0xff}, 1000), Version: 1 << 40, ScalarVersion: 7},
	} {
		got, err := decodeEntry(e.Key, encodeEntry(e))
		if err != nil {
			t.Fatalf("decodeEntry(encode(%+v)): %v", e, err)
		}
		if got.Key != e.Key || got.Deleted != e.Deleted || got.Version != e.Version ||
			got.ScalarVersion != e.ScalarVersion || !bytes.Equal(got.Value, e.Value) || (got.Value == nil) != e.Deleted {
			t.Errorf("decodeEntry(encode(%+v)) = %+v", e, got)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, tc := range []struct {
		name   string
		decode func([]byte) error
		b      []byte
	}{
		{"EntryEmpty", decodeEntryErr, nil},
		{"EntryFlags", decodeEntryErr, []byte{2, 1, 1}},
		{"EntryTruncatedVersion", decodeEntryErr, []byte{0, 0x80}},
		{"EntryNonMinimalVarint", decodeEntryErr, []byte{0, 0x81, 0x00, 1}},
		{"TombstoneWithValue", decodeEntryErr, []byte{1, 1, 1, 'x'}},
		{"HeadEmpty", decodeHeadErr, nil},
		{"HeadTrailing", decodeHeadErr, []byte{2, 1, 0}},
		{"HeadHorizonAboveVersion", decodeHeadErr, []byte{1, 2}},
		{"FeedEmpty", decodeFeedErr, nil},
		{"FeedFlags", decodeFeedErr, []byte{4, 1, 1, 1, 'a'}},
		{"FeedNoName", decodeFeedErr, []byte{0, 1, 1, 0}},
		{"FeedNameTooLong", decodeFeedErr, []byte{0, 1, 1, 5, 'a'}},
		{"FeedTimeOverflow", decodeFeedErr, []byte{0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 1, 'a'}},
		{"PartitionKind", decodePartitionErr, []byte{'x', 1, 'a'}},
		{"PartitionEmptyName", decodePartitionErr, []byte{'u', 0}},
		{"PartitionShort", decodePartitionErr, []byte{'u', 3, 'a'}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.decode(tc.b); !errors.Is(err, store.ErrCorruption) {
				t.Errorf("decode(%x) = %v, want ErrCorruption", tc.b, err)
			}
		})
	}
}

func decodeEntryErr(b []byte) error {
	_, err := decodeEntry("k", b)
	return err
}

func decodeHeadErr(b []byte) error {
	_, err := decodeHead(b)
	return err
}

func decodeFeedErr(b []byte) error {
	_, err := decodeFeedRecord(b)
	return err
}

func decodePartitionErr(b []byte) error {
	_, _, err := decodePartition(b)
	return err
}

// FuzzDecodeEntry checks that decoding never panics, fails only with
// ErrCorruption, and that what decodes re-encodes to the same bytes.
func FuzzDecodeEntry(f *testing.F) {
	f.Add(encodeEntry(store.Entry{Value: []byte("v"), Version: 1, ScalarVersion: 1}))
	f.Add(encodeEntry(store.Entry{Deleted: true, Version: 300, ScalarVersion: 2}))
	f.Add([]byte{})
	f.Add([]byte{1, 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEntry("k", b)
		if err != nil {
			if !errors.Is(err, store.ErrCorruption) {
				t.Fatalf("decodeEntry(%x) = %v, not ErrCorruption", b, err)
			}
			return
		}
		if got := encodeEntry(e); !bytes.Equal(got, b) {
			t.Fatalf("decodeEntry(%x) = %+v, which encodes to %x", b, e, got)
		}
		if deleted, version, scalar, _, err := decodeEntryHeader(b); err != nil || deleted != e.Deleted || version != e.Version || scalar != e.ScalarVersion {
			t.Fatalf("decodeEntryHeader(%x) disagrees with decodeEntry", b)
		}
	})
}

// FuzzDecodeFeedRecord is FuzzDecodeEntry for feed records.
func FuzzDecodeFeedRecord(f *testing.F) {
	f.Add(encodeFeedRecord(feedRecord{Partition: store.Partition{Name: "alice"}, Version: 1, Nanos: 1, Ops: []byte("ops")}))
	f.Add(encodeFeedRecord(feedRecord{Partition: store.Partition{Shared: true, Name: "c"}, Version: 1 << 50, Nanos: math.MaxInt64, Erase: true}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeFeedRecord(b)
		if err != nil {
			if !errors.Is(err, store.ErrCorruption) {
				t.Fatalf("decodeFeedRecord(%x) = %v, not ErrCorruption", b, err)
			}
			return
		}
		if got := encodeFeedRecord(r); !bytes.Equal(got, b) {
			t.Fatalf("decodeFeedRecord(%x) = %+v, which encodes to %x", b, r, got)
		}
		if nanos, err := decodeFeedTime(b); err != nil || nanos != r.Nanos {
			t.Fatalf("decodeFeedTime(%x) = %d, %v, want %d", b, nanos, err, r.Nanos)
		}
	})
}

// FuzzDecodeKeys checks the key decoders: a partition and a tombstone index
// key that decode re-encode to the same bytes.
func FuzzDecodeKeys(f *testing.F) {
	f.Add(appendPartition(nil, store.Partition{Name: "alice"}))
	f.Add(appendTombKey(nil, 5, appendPartition(nil, store.Partition{Shared: true, Name: "a"}), "key"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, rest, err := decodePartition(b); err == nil {
			if got := append(appendPartition(nil, p), rest...); !bytes.Equal(got, b) {
				t.Fatalf("decodePartition(%x) = %+v, %x, which encodes to %x", b, p, rest, got)
			}
		} else if !errors.Is(err, store.ErrCorruption) {
			t.Fatalf("decodePartition(%x) = %v, not ErrCorruption", b, err)
		}
		if nanos, p, key, err := decodeTombKey(b); err == nil {
			if got := appendTombKey(nil, nanos, appendPartition(nil, p), key); !bytes.Equal(got, b) {
				t.Fatalf("decodeTombKey(%x) re-encodes to %x", b, got)
			}
		} else if !errors.Is(err, store.ErrCorruption) {
			t.Fatalf("decodeTombKey(%x) = %v, not ErrCorruption", b, err)
		}
	})
}

func TestPrefixEnd(t *testing.T) {
	for _, tc := range []struct{ in, want []byte }{
		{[]byte("a/"), []byte("a0")},
		{[]byte{'a', 0xff}, []byte("b")},
		{[]byte{0xff, 0xff}, nil},
	} {
		if got := prefixEnd(tc.in); !bytes.Equal(got, tc.want) {
			t.Errorf("prefixEnd(%x) = %x, want %x", tc.in, got, tc.want)
		}
	}
}
