package client

// Damaged replica files: the check at open, and what Open does with a
// damaged file when the application set Options.OnCorrupt.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/dalvdb/dalv/value"
)

// CorruptReport says what [Open] did with a damaged replica file when
// [Options.OnCorrupt] is set: where the damaged file went, what it could
// carry over into the fresh replica, and what it could not.
type CorruptReport struct {
	// Path is the replica file, now a fresh replica.
	Path string
	// MovedTo is where the damaged file was set aside, untouched.
	MovedTo string
	// Err is what was wrong with the file; it matches [ErrCorrupt].
	Err error
	// DeviceID is the fresh replica's device id. DeviceIDKept reports that
	// it is the damaged file's: the server then recognises the salvaged
	// batches it already applied, so none applies twice.
	DeviceID     string
	DeviceIDKept bool
	// Batches and Ops count the pending writes salvaged and queued again,
	// under their old batch numbers; they go up with the next sync.
	Batches, Ops int
	// Conflicts and Refused count the deferred conflicts and refused
	// batches carried over.
	Conflicts, Refused int
	// Lost says what could not be saved, one sentence each. Synced data
	// is not listed: the next sync brings it back from the server.
	Lost []string
}

// guard turns a panic of bbolt reading a damaged page in this goroutine (an
// index out of range, or a fault in its memory map, which SetPanicOnFault
// makes a panic) into an [ErrCorrupt] error in *err naming path. Use it as
// defer guard(path, &err)(). Panics in goroutines bbolt starts itself
// cannot be caught; checkFile keeps damaged pages from reaching them.
func guard(path string, err *error) func() {
	old := debug.SetPanicOnFault(true)
	return func() {
		debug.SetPanicOnFault(old)
		if p := recover(); p != nil {
			*err = corruptf("%s: reading the file: %v", path, p)
		}
	}
}

// checkReplicaFile checks an existing replica file's pages before bbolt
// opens it for writing, holding bbolt's shared lock meanwhile so that
// another process's writes cannot show as damage. A missing file is fine
// (Open creates it); a file another process holds is [ErrLocked].
func checkReplicaFile(path string, o Options) error {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.Size() == 0 {
		return corruptf("the file is empty (0 bytes)")
	}
	// A read-only bbolt takes the shared lock and reads the meta pages,
	// nothing else: it loads no freelist.
	ro, roErr := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: o.LockTimeout, NoStatistics: true})
	if errors.Is(roErr, bolterrors.ErrTimeout) {
		return fmt.Errorf("%w (locked for more than %v; is another copy of the app running on it?)", ErrLocked, o.LockTimeout)
	}
	if ro != nil {
		defer ro.Close()
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := checkFile(data); err != nil {
		return corruptf("%v", err)
	}
	// The pages are sound: whatever else stopped bbolt (no memory to map
	// the file, say) is not damage, and must not get the file set aside.
	return roErr
}

// salvaged is what could be read from a damaged file.
type salvaged struct {
	device, user     []byte
	pendingSeq       uint64
	pendingSeqKnown  bool // the pending bucket's header was read
	refusedSeq       uint64
	batches          map[uint64][]byte // seq -> record, decoded fine
	pkeys            map[string][]byte
	inbox            map[string][]byte
	refused          map[uint64][]byte
	lost             []string
	whole            bool // nothing but synced data was unreadable
	batchN           int
	inboxN, refusedN int
}

// salvage reads what it can of a damaged replica file's pending writes,
// deferred conflicts and refused batches, its device id and user. Every
// offset it reads is bounded; a panic anyway (a bug) costs the salvage,
// not the process.
func salvage(data []byte) (s *salvaged) {
	s = &salvaged{}
	defer func() {
		if p := recover(); p != nil {
			s = &salvaged{lost: []string{fmt.Sprintf("everything: reading the file failed (%v)", p)}}
		}
	}()
	f, err := parseBoltFile(data)
	if f.ps == 0 {
		return &salvaged{lost: []string{fmt.Sprintf("everything: %v", err)}}
	}
	// Try each meta page, valid ones first, newest first (bbolt's choice
	// first); keep the first walk that met no damage outside the synced
	// data, or else the one that recovered the most.
	metas := slices.Clone(f.metas)
	slices.SortStableFunc(metas, func(a, b boltMeta) int {
		if (a.err == "") != (b.err == "") {
			if a.err == "" {
				return -1
			}
			return 1
		}
		return -cmpUint(a.txid, b.txid)
	})
	var best *salvaged
	for i, m := range metas {
		if m.root < 2 {
			continue
		}
		c := salvageFrom(f, m)
		if i > 0 {
			// bbolt keeps the tree of the transaction before the last
			// one: it may be whole, but lacks the last write.
			c.lost = append(c.lost, fmt.Sprintf("the last transaction (the tree of meta page %d was read instead: the writes of the last transaction may be missing)", m.page))
		}
		if c.whole {
			return c
		}
		if best == nil || c.score() > best.score() {
			best = c
		}
	}
	if best == nil {
		return &salvaged{lost: []string{fmt.Sprintf("everything: %v", err)}}
	}
	return best
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (s *salvaged) score() int {
	n := s.batchN*4 + s.inboxN + s.refusedN
	if s.device != nil {
		n++
	}
	return n
}

// salvageFrom walks the buckets from meta page m leniently.
func salvageFrom(f *boltFile, m boltMeta) *salvaged {
	s := &salvaged{
		batches: map[uint64][]byte{}, pkeys: map[string][]byte{},
		inbox: map[string][]byte{}, refused: map[uint64][]byte{},
	}
	in := func(path []string, name []byte) bool { return len(path) == 1 && path[0] == string(name) }
	w := &walker{f: f, seen: map[uint64]bool{0: true, 1: true}}
	w.bucketSeq = func(path []string, seq uint64) {
		switch {
		case in(path, bktPending):
			s.pendingSeq, s.pendingSeqKnown = seq, true
		case in(path, bktRefused):
			s.refusedSeq = seq
		}
	}
	w.visit = func(path []string, k, v []byte) {
		switch {
		case in(path, bktMeta) && string(k) == string(keyDevice):
			s.device = slices.Clone(v)
		case in(path, bktMeta) && string(k) == string(keyUser):
			s.user = slices.Clone(v)
		case in(path, bktPending):
			if len(k) != 8 {
				s.lost = append(s.lost, fmt.Sprintf("a pending batch under the bad key %x", k))
				return
			}
			seq := binary.BigEndian.Uint64(k)
			b, err := decodeBatch(seq, v)
			if err == nil {
				err = checkSalvagedOps(b.ops)
			}
			if err != nil {
				s.lost = append(s.lost, fmt.Sprintf("pending batch %d: %v", seq, err))
				return
			}
			s.batches[seq] = slices.Clone(v)
			s.batchN++
		case in(path, bktPkeys):
			if _, err := decodePkey(v); err == nil {
				s.pkeys[string(k)] = slices.Clone(v)
			}
		case in(path, bktInbox):
			if _, err := decodeConflict(string(k), v); err != nil {
				s.lost = append(s.lost, fmt.Sprintf("deferred conflict on %q: %v", k, err))
				return
			}
			s.inbox[string(k)] = slices.Clone(v)
			s.inboxN++
		case in(path, bktRefused):
			if len(k) != 8 {
				return
			}
			id := binary.BigEndian.Uint64(k)
			if _, err := decodeRefused(id, v); err != nil {
				s.lost = append(s.lost, fmt.Sprintf("refused batch %d: %v", id, err))
				return
			}
			s.refused[id] = slices.Clone(v)
			s.refusedN++
		}
	}
	hdr := binary.NativeEndian.AppendUint64(nil, m.root)
	hdr = binary.NativeEndian.AppendUint64(hdr, m.rootSeq)
	w.bucket(nil, hdr, 0)
	s.whole = len(s.lost) == 0
	for _, p := range w.problems {
		// Damage to synced data costs nothing: the server has it.
		if !isSyncedData(p) {
			s.lost = append(s.lost, "unreadable, with what it held: "+p)
			s.whole = false
		}
	}
	if s.device == nil {
		s.lost = append(s.lost, "the device id (a new one was made; salvaged batches the server had already applied may apply again)")
	}
	return s
}

// checkSalvagedOps refuses a salvaged batch without ops or with a key the
// device could not have written: that is damage, and bbolt could not
// store such a key in the pending-key records.
func checkSalvagedOps(ops []*Op) error {
	if len(ops) == 0 {
		return errors.New("no ops")
	}
	for _, op := range ops {
		if err := value.ValidateKey(op.GetKey(), bolt.MaxKeySize); err != nil {
			return err
		}
	}
	return nil
}

// isSyncedData reports whether a walker problem is in the synced data.
func isSyncedData(problem string) bool {
	prefix := "bucket " + string(bktParts)
	return len(problem) > len(prefix) && problem[:len(prefix)] == prefix && (problem[len(prefix)] == '/' || problem[len(prefix)] == ':')
}

// recoverCorrupt replaces the damaged replica file at path with a fresh one
// holding what salvage could read, and sets the damaged file aside next to
// it. The fresh file is written whole under a temporary name first, so a
// crash midway leaves the damaged file in place and the next Open starts
// over.
func recoverCorrupt(path string, o Options, cause error) (*CorruptReport, error) {
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	s := salvage(data)
	rep := &CorruptReport{Path: path, Err: cause, Lost: s.lost}
	tmp := path + ".salvage"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	db, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: o.LockTimeout, NoStatistics: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return nil, err
	}
	err = db.Update(func(tx *bolt.Tx) error { return s.write(tx, rep) })
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return nil, err
	}
	rep.MovedTo = fmt.Sprintf("%s.corrupt-%s", path, o.Now().UTC().Format("20060102T150405.000000000Z"))
	if err := os.Rename(path, rep.MovedTo); err != nil && !errors.Is(err, fs.ErrNotExist) {
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync() // the renames are durable before anything is written to the fresh file
		d.Close()
	}
	return rep, nil
}

// write lays out a fresh replica file holding s, filling in rep.
func (s *salvaged) write(tx *bolt.Tx, rep *CorruptReport) error {
	bk := map[string]*bolt.Bucket{}
	for _, name := range [][]byte{bktMeta, bktParts, bktPending, bktPkeys, bktInbox, bktRefused} {
		b, err := tx.CreateBucket(name)
		if err != nil {
			return err
		}
		bk[string(name)] = b
	}
	meta := bk[string(bktMeta)]
	if err := meta.Put(keyFormat, []byte(fileFormat)); err != nil {
		return err
	}
	if s.user != nil {
		// The salvaged writes are this user's: a token for another user
		// must still be refused.
		if err := meta.Put(keyUser, s.user); err != nil {
			return err
		}
	}
	switch {
	case s.device != nil && s.pendingSeqKnown:
		rep.DeviceID, rep.DeviceIDKept = string(s.device), true
	case s.device != nil:
		// Without the last batch number, new batches under the old id
		// could reuse numbers the server took as applied, and be dropped.
		rep.Lost = append(rep.Lost, "the last batch number (a new device id was made; salvaged batches the server had already applied may apply again)")
		fallthrough
	default:
		id, err := newDeviceID()
		if err != nil {
			return err
		}
		rep.DeviceID = id
	}
	if err := meta.Put(keyDevice, []byte(rep.DeviceID)); err != nil {
		return err
	}

	// Pending batches, under their own keys and numbers, and a record for
	// each key they touch. A key whose record was lost gets no base and is
	// marked as possibly changed remotely, so the server flags it and the
	// resolver (or the inbox) decides rather than overwriting blindly.
	pending, pk := bk[string(bktPending)], bk[string(bktPkeys)]
	seqs := make([]uint64, 0, len(s.batches))
	for seq := range s.batches {
		seqs = append(seqs, seq)
	}
	slices.Sort(seqs)
	top := s.pendingSeq
	keys := map[string]bool{}
	for _, seq := range seqs {
		b, err := decodeBatch(seq, s.batches[seq])
		if err != nil {
			return err
		}
		if err := pending.Put(seqKey(seq), s.batches[seq]); err != nil {
			return err
		}
		top = max(top, seq, b.no)
		for _, p := range b.parts {
			top = max(top, p.seq)
		}
		for _, op := range b.ops {
			keys[op.GetKey()] = true
		}
		rep.Batches++
		rep.Ops += len(b.ops)
	}
	for k := range keys {
		rec := s.pkeys[k]
		if rec == nil {
			rec = encodePkey(&pkey{u: 1})
			rep.Lost = append(rep.Lost, fmt.Sprintf("the base value of pending key %q (its writes go up flagged as a conflict where the server holds something else)", k))
		}
		if err := pk.Put([]byte(k), rec); err != nil {
			return err
		}
	}
	for k, v := range s.inbox {
		if err := bk[string(bktInbox)].Put([]byte(k), v); err != nil {
			return err
		}
		rep.Conflicts++
	}
	// Refused batches keep the sequence they had as pending batches.
	refused := bk[string(bktRefused)]
	for id, v := range s.refused {
		if err := refused.Put(seqKey(id), v); err != nil {
			return err
		}
		top = max(top, id)
		rep.Refused++
	}
	if err := refused.SetSequence(s.refusedSeq); err != nil {
		return err
	}
	return pending.SetSequence(top)
}

// reportCorrupt logs what recovery did and hands it to the application.
func reportCorrupt(o Options, rep *CorruptReport) {
	o.Logger.Warn("replica file damaged; set aside and started afresh",
		"path", rep.Path, "moved_to", rep.MovedTo, "err", rep.Err,
		"device_kept", rep.DeviceIDKept, "batches", rep.Batches, "ops", rep.Ops,
		"conflicts", rep.Conflicts, "refused", rep.Refused, "lost", rep.Lost)
	o.OnCorrupt(*rep)
}
