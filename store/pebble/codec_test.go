package pebble

import (
	"bytes"
	"errors"
	"math"
	"testing"

	"github.com/dalvdb/dalv/store"
)

func encodeEntry(e store.Entry, nanos uint64) []byte {
	b := make([]byte, entryLen(&e, nanos))
	putEntry(b, &e, nanos)
	return b
}

// encodeEntryAs encodes an entry from its header and value: tombstones
// without a time too, which the format allows.
func encodeEntryAs(h entryHeader, value []byte) []byte {
	b := make([]byte, h.len())
	h.put(b)
	return append(b, value...)
}

func encodeFeedRecord(r feedRecord) []byte {
	b := make([]byte, feedRecordLen(&r))
	putFeedRecord(b, &r)
	return b
}

func TestEntryRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		e     store.Entry
		nanos uint64
	}{
		{store.Entry{Key: "k", Value: []byte("v"), Version: 1, ScalarVersion: 1}, 5},
		{store.Entry{Key: "k", Value: []byte{}, Version: 300, ScalarVersion: 0}, 0},
		{store.Entry{Key: "k", Deleted: true, Version: math.MaxUint64, ScalarVersion: math.MaxUint64}, math.MaxInt64},
		{store.Entry{Key: "k", Deleted: true, Version: 2, ScalarVersion: 1}, 0},
		{store.Entry{Key: "k", Value: bytes.Repeat([]byte{0xff}, 1000), Version: 1 << 40, ScalarVersion: 7}, 1 << 62},
	} {
		e := tc.e
		got, h, err := decodeEntry(e.Key, encodeEntry(e, tc.nanos))
		if err != nil {
			t.Fatalf("decodeEntry(encode(%+v)): %v", e, err)
		}
		if got.Key != e.Key || got.Deleted != e.Deleted || got.Version != e.Version ||
			got.ScalarVersion != e.ScalarVersion || !bytes.Equal(got.Value, e.Value) || (got.Value == nil) != e.Deleted {
			t.Errorf("decodeEntry(encode(%+v)) = %+v", e, got)
		}
		// Only tombstones keep their time: a live entry has no index key.
		if want := (entryHeader{deleted: e.Deleted, version: e.Version, scalar: e.ScalarVersion, timed: e.Deleted}); e.Deleted {
			want.nanos = tc.nanos
			if h != want {
				t.Errorf("header of %+v at %d = %+v, want %+v", e, tc.nanos, h, want)
			}
		} else if h != want {
			t.Errorf("header of %+v = %+v, want %+v", e, h, want)
		}
	}
}

// TestHeadDevices round-trips a head through its devices: the latest
// first, a device's older place dropped, the oldest pushed out past
// maxHeadDevices. Each head is round-tripped with and without a feed seq.
func TestHeadDevices(t *testing.T) {
	h := store.Head{Version: 9, Horizon: 2}
	var devs []byte
	add := func(device string, batch uint64) (pushed string, pushedBatch uint64) {
		t.Helper()
		out, p, pb := withHeadDevice(nil, devs, device, batch)
		for _, feedSeq := range []uint64{0, 1, 300} {
			enc := encodeHead(nil, h, feedSeq, out)
			if len(enc) != headLen(h, feedSeq, out) {
				t.Fatalf("encodeHead(%v, %d, %x) is %d bytes, headLen says %d", h, feedSeq, out, len(enc), headLen(h, feedSeq, out))
			}
			got, gotSeq, gotDevs, err := decodeHead(enc)
			if err != nil || got != h || gotSeq != feedSeq || !bytes.Equal(gotDevs, out) {
				t.Fatalf("decodeHead(encodeHead(%v, %d, %x)) = %v, %d, %x, %v", h, feedSeq, out, got, gotSeq, gotDevs, err)
			}
		}
		devs = out
		return string(p), pb
	}
	for i, d := range []string{"a", "b", "c", "d"} {
		if p, _ := add(d, uint64(i+1)); p != "" {
			t.Fatalf("adding %s pushed out %s", d, p)
		}
	}
	if p, _ := add("b", 20); p != "" { // already kept: moves first
		t.Fatalf("adding b again pushed out %s", p)
	}
	if p, pb := add("e", 5); p != "a" || pb != 1 {
		t.Fatalf("adding e pushed out %q at %d, want a at 1", p, pb)
	}
	for _, tc := range []struct {
		device string
		batch  uint64
		ok     bool
	}{{"e", 5, true}, {"b", 20, true}, {"c", 3, true}, {"d", 4, true}, {"a", 0, false}, {"", 0, false}} {
		if b, ok := headDeviceBatch(devs, tc.device); b != tc.batch || ok != tc.ok {
			t.Errorf("headDeviceBatch(%q) = %d, %v, want %d, %v", tc.device, b, ok, tc.batch, tc.ok)
		}
	}
	// A head written before heads kept devices has none.
	if got, gotSeq, gotDevs, err := decodeHead([]byte{9, 2}); err != nil || got != h || gotSeq != 0 || len(gotDevs) != 0 {
		t.Errorf("decodeHead(version, horizon) = %v, %d, %x, %v", got, gotSeq, gotDevs, err)
	}
	// Nor a feed seq: its records are found by their feed index keys.
	if got, gotSeq, gotDevs, err := decodeHead([]byte{9, 2, 1, 'a', 7}); err != nil || got != h || gotSeq != 0 || string(gotDevs) != "\x01a\x07" {
		t.Errorf("decodeHead(version, horizon, device) = %v, %d, %x, %v", got, gotSeq, gotDevs, err)
	}
}

// TestEntryUntimedTombstone decodes a tombstone with entryTimed clear: it
// has no time, and its header is untimed.
func TestEntryUntimedTombstone(t *testing.T) {
	e, h, err := decodeEntry("k", []byte{entryDeleted, 3, 2})
	if err != nil {
		t.Fatal(err)
	}
	if want := (store.Entry{Key: "k", Deleted: true, Version: 3, ScalarVersion: 2}); e.Key != want.Key || e.Deleted != want.Deleted ||
		e.Version != want.Version || e.ScalarVersion != want.ScalarVersion || e.Value != nil {
		t.Errorf("decodeEntry = %+v, want %+v", e, want)
	}
	if h.timed {
		t.Errorf("header %+v is timed", h)
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, tc := range []struct {
		name   string
		decode func([]byte) error
		b      []byte
	}{
		{"EntryEmpty", decodeEntryErr, nil},
		{"EntryFlags", decodeEntryErr, []byte{4, 1, 1}},
		{"EntryTimedLive", decodeEntryErr, []byte{entryTimed, 1, 1, 1}},
		{"EntryTimeTruncated", decodeEntryErr, []byte{entryDeleted | entryTimed, 1, 1}},
		{"EntryTimeOverflow", decodeEntryErr, []byte{entryDeleted | entryTimed, 1, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1}},
		{"TimedTombstoneWithValue", decodeEntryErr, []byte{entryDeleted | entryTimed, 1, 1, 1, 'x'}},
		{"EntryTruncatedVersion", decodeEntryErr, []byte{0, 0x80}},
		{"EntryNonMinimalVarint", decodeEntryErr, []byte{0, 0x81, 0x00, 1}},
		{"TombstoneWithValue", decodeEntryErr, []byte{1, 1, 1, 'x'}},
		{"HeadEmpty", decodeHeadErr, nil},
		{"HeadFeedSeqMissing", decodeHeadErr, []byte{2, 1, 0}},
		{"HeadFeedSeqZero", decodeHeadErr, []byte{2, 1, 0, 0}},
		{"HeadFeedSeqTruncated", decodeHeadErr, []byte{2, 1, 0, 0x80}},
		{"HeadFeedSeqTwice", decodeHeadErr, []byte{2, 1, 0, 5, 0, 6}},
		{"HeadHorizonAboveVersion", decodeHeadErr, []byte{1, 2}},
		{"HeadDeviceTooLong", decodeHeadErr, []byte{2, 1, 3, 'a', 'b'}},
		{"HeadDeviceNoBatch", decodeHeadErr, []byte{2, 1, 1, 'a'}},
		{"HeadDeviceBadBatch", decodeHeadErr, []byte{2, 1, 1, 'a', 0x80}},
		{"HeadTooManyDevices", decodeHeadErr, []byte{2, 1, 1, 'a', 1, 1, 'b', 1, 1, 'c', 1, 1, 'd', 1, 1, 'e', 1}},
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
	_, _, err := decodeEntry("k", b)
	return err
}

func decodeHeadErr(b []byte) error {
	_, _, _, err := decodeHead(b)
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
	f.Add(encodeEntry(store.Entry{Value: []byte("v"), Version: 1, ScalarVersion: 1}, 7))
	f.Add(encodeEntry(store.Entry{Deleted: true, Version: 300, ScalarVersion: 2}, 1_735_689_600_000_000_000))
	f.Add(encodeEntryAs(entryHeader{deleted: true, version: 300, scalar: 2}, nil)) // untimed tombstone
	f.Add([]byte{})
	f.Add([]byte{1, 0x80})
	f.Add([]byte{entryDeleted | entryTimed, 1, 1, 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, h, err := decodeEntry("k", b)
		if err != nil {
			if !errors.Is(err, store.ErrCorruption) {
				t.Fatalf("decodeEntry(%x) = %v, not ErrCorruption", b, err)
			}
			return
		}
		if got := encodeEntryAs(h, e.Value); !bytes.Equal(got, b) {
			t.Fatalf("decodeEntry(%x) = %+v, %+v, which encodes to %x", b, e, h, got)
		}
		if h.timed {
			if got := encodeEntry(e, h.nanos); !bytes.Equal(got, b) {
				t.Fatalf("decodeEntry(%x) = %+v at %d, which encodes to %x", b, e, h.nanos, got)
			}
		}
		if h2, _, err := decodeEntryHeader(b); err != nil || h2 != h || h.deleted != e.Deleted || h.version != e.Version || h.scalar != e.ScalarVersion {
			t.Fatalf("decodeEntryHeader(%x) disagrees with decodeEntry", b)
		}
	})
}

// FuzzDecodeFeedRecord is FuzzDecodeEntry for feed records.
func FuzzDecodeFeedRecord(f *testing.F) {
	f.Add(encodeFeedRecord(feedRecord{Partition: store.Partition{Name: "alice"}, Version: 1, Nanos: 1, Ops: []byte("ops")}))
	f.Add(encodeFeedRecord(feedRecord{Partition: store.Partition{Shared: true, Name: "c"}, Version: 1 << 50, Nanos: math.MaxInt64, Erase: true}))
	f.Add(encodeFeedRecord(feedRecord{Partition: store.Partition{Name: "bob"}, Version: 7, Nanos: 9, Linked: true, Prev: 300, Ops: []byte("ops")}))
	f.Add(encodeFeedRecord(feedRecord{Partition: store.Partition{Name: "bob"}, Version: 8, Nanos: 9, Linked: true, Erase: true}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if h, n, err := decodeFeedHeader(b); err == nil {
			if got := append(encodeFeedRecord(h), b[n:]...); !bytes.Equal(got, b) {
				t.Fatalf("decodeFeedHeader(%x) = %+v, %d, which encodes to %x", b, h, n, got)
			}
		}
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

// FuzzDecodeHead is FuzzDecodeEntry for heads.
func FuzzDecodeHead(f *testing.F) {
	f.Add(encodeHead(nil, store.Head{Version: 9, Horizon: 2}, 0, nil))
	f.Add(encodeHead(nil, store.Head{Version: 1 << 40, Horizon: 3}, 1<<33, appendHeadDevice(nil, "phone", 12)))
	f.Add([]byte{2, 1, 0, 5, 1, 'a', 7})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, feedSeq, devs, err := decodeHead(b)
		if err != nil {
			if !errors.Is(err, store.ErrCorruption) {
				t.Fatalf("decodeHead(%x) = %v, not ErrCorruption", b, err)
			}
			return
		}
		if got := encodeHead(nil, h, feedSeq, devs); !bytes.Equal(got, b) || len(got) != headLen(h, feedSeq, devs) {
			t.Fatalf("decodeHead(%x) = %v, %d, %x, which encodes to %x", b, h, feedSeq, devs, got)
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
		if got := store.PrefixEnd(tc.in); !bytes.Equal(got, tc.want) {
			t.Errorf("store.PrefixEnd(%x) = %x, want %x", tc.in, got, tc.want)
		}
	}
}
