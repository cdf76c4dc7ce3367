package client

// The replica file read page by page without bbolt, for two jobs bbolt
// cannot do safely on a damaged file:
//
//   - checkFile runs before bbolt touches the pages. bbolt trusts its pages:
//     a damaged one makes it read past the end of its memory map (a fault,
//     fatal to the process), index out of range, or recurse forever, and
//     some of that happens in goroutines bbolt starts itself (the scan that
//     rebuilds the freelist at open, Tx.Check), where nobody can recover
//     it. checkFile reads the same structure from a plain byte slice, with
//     every offset bounded, in the caller's goroutine, and says what is
//     wrong instead.
//   - salvage walks a damaged file leniently: a page that does not parse is
//     skipped with a note, the rest is read.
//
// The format is bbolt's (go.etcd.io/bbolt, internal/common): pages of
// pageSize bytes, each with a 16-byte header (id u64, flags u16, count u16,
// overflow u32) in the machine's byte order; two meta pages; branch
// elements (pos u32, ksize u32, pgid u64) and leaf elements (flags u32,
// pos u32, ksize u32, vsize u32), pos counted from the element itself; a
// bucket is a leaf value of root u64 and sequence u64, followed by an
// inline leaf page when root is 0.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"os"
	"sort"
	"strings"
)

const (
	boltMagic          = 0xED0CDAED
	boltVersion        = 2
	boltNoFreelist     = ^uint64(0)
	boltPageHeader     = 16
	boltElemSize       = 16
	boltBucketHeader   = 16
	boltBranchFlag     = 0x01
	boltLeafFlag       = 0x02
	boltMetaFlag       = 0x04
	boltFreelistFlag   = 0x10
	boltBucketLeafFlag = 0x01
	// boltMaxDepth bounds the nesting of pages and buckets walked; a real
	// replica is a few levels deep.
	boltMaxDepth = 64
)

var ne = binary.NativeEndian // bbolt writes its pages in the machine's byte order

// boltMeta is one meta page.
type boltMeta struct {
	page     uint64 // 0 or 1
	pageSize uint64
	root     uint64 // the root bucket's page
	rootSeq  uint64
	freelist uint64
	pgid     uint64 // the high-water mark: pages [0, pgid) are in use
	txid     uint64
	err      string // why it fails bbolt's validation; empty when valid
}

func parseMeta(data []byte, off int, page uint64) boltMeta {
	m := boltMeta{page: page}
	if off < 0 || off+80 > len(data) {
		m.err = "cut off by the end of the file"
		return m
	}
	b := data[off:]
	m.pageSize = uint64(ne.Uint32(b[24:]))
	m.root = ne.Uint64(b[32:])
	m.rootSeq = ne.Uint64(b[40:])
	m.freelist = ne.Uint64(b[48:])
	m.pgid = ne.Uint64(b[56:])
	m.txid = ne.Uint64(b[64:])
	h := fnv.New64a()
	h.Write(b[16:72])
	switch {
	case ne.Uint32(b[16:]) != boltMagic:
		m.err = "bad magic number"
	case ne.Uint32(b[20:]) != boltVersion:
		m.err = fmt.Sprintf("format version %d", ne.Uint32(b[20:]))
	case ne.Uint64(b[72:]) != h.Sum64():
		m.err = "bad checksum"
	}
	return m
}

// boltFile is a replica file's bytes and the meta page bbolt would use.
type boltFile struct {
	data  []byte
	ps    uint64
	meta  boltMeta   // the valid meta with the highest txid, as bbolt picks
	metas []boltMeta // both, for salvage
}

// parseBoltFile finds the page size and the meta pages as bbolt does. It
// returns an error (without ErrCorrupt; callers add it) when neither meta
// page is valid; f still holds what could be read, for salvage.
func parseBoltFile(data []byte) (*boltFile, error) {
	f := &boltFile{data: data}
	if len(data) == 0 {
		return f, fmt.Errorf("the file is empty (0 bytes)")
	}
	m0 := parseMeta(data, 0, 0)
	if m0.err == "" {
		f.ps = m0.pageSize
	} else {
		// bbolt looks for the second meta page at each possible page size.
		for ps := uint64(1024); ps <= 1024<<14 && ps < uint64(len(data)); ps <<= 1 {
			if m := parseMeta(data, int(ps), 1); m.err == "" && m.pageSize == ps {
				f.ps = ps
				break
			}
		}
	}
	if f.ps == 0 {
		f.ps = uint64(os.Getpagesize())
		if m0.pageSize >= 512 && m0.pageSize <= 1<<24 && m0.pageSize&(m0.pageSize-1) == 0 {
			f.ps = m0.pageSize
		}
	}
	if f.ps < 512 || f.ps > 1<<24 {
		return f, fmt.Errorf("page size %d", f.ps)
	}
	m0 = parseMeta(data, 0, 0) // page 0 is at 0 whatever the page size
	m1 := parseMeta(data, int(f.ps), 1)
	f.metas = []boltMeta{m0, m1}
	a, b := m0, m1
	if m1.txid > m0.txid {
		a, b = m1, m0
	}
	switch {
	case a.err == "":
		f.meta = a
	case b.err == "":
		f.meta = b
	default:
		return f, fmt.Errorf("both meta pages are damaged (page 0: %s; page 1: %s)", m0.err, m1.err)
	}
	return f, nil
}

// page returns page id with its overflow pages, or why it cannot be read.
// hwm bounds the ids (the meta's high-water mark; 0 for none).
func (f *boltFile) page(id, hwm uint64) ([]byte, error) {
	if id < 2 || (hwm > 0 && id >= hwm) {
		return nil, fmt.Errorf("page %d: id out of range [2, %d)", id, hwm)
	}
	off := id * f.ps
	if off/f.ps != id || off+boltPageHeader > uint64(len(f.data)) {
		return nil, fmt.Errorf("page %d: past the end of the file (%d bytes)", id, len(f.data))
	}
	h := f.data[off:]
	if got := ne.Uint64(h); got != id {
		return nil, fmt.Errorf("page %d: header says page %d", id, got)
	}
	over := uint64(ne.Uint32(h[12:]))
	if hwm > 0 && id+over >= hwm {
		return nil, fmt.Errorf("page %d: %d overflow pages run past the high-water mark %d", id, over, hwm)
	}
	end := off + (over+1)*f.ps
	if end > uint64(len(f.data)) {
		return nil, fmt.Errorf("page %d: its %d overflow pages run past the end of the file", id, over)
	}
	return f.data[off:end], nil
}

// walker walks buckets and their pages, noting what is wrong and skipping
// what it cannot read.
type walker struct {
	f        *boltFile
	hwm      uint64
	seen     map[uint64]bool // pages reached
	problems []string
	// visit, when set, receives each key/value of a bucket (not the
	// sub-bucket entries); path is the bucket's, joined with "/".
	visit func(path []string, k, v []byte)
	// bucketSeq, when set, receives each bucket's sequence.
	bucketSeq func(path []string, seq uint64)
	// onPage, when set, receives each page of a bucket's tree.
	onPage func(path []string, id uint64)
}

func (w *walker) problem(path []string, format string, args ...any) {
	where := "root bucket"
	if len(path) > 0 {
		where = "bucket " + strings.Join(path, "/")
	}
	w.problems = append(w.problems, where+": "+fmt.Sprintf(format, args...))
}

// bucket walks the bucket whose header is hdr.
func (w *walker) bucket(path []string, hdr []byte, depth int) {
	if len(hdr) < boltBucketHeader {
		w.problem(path, "bucket header of %d bytes", len(hdr))
		return
	}
	if w.bucketSeq != nil {
		w.bucketSeq(path, ne.Uint64(hdr[8:]))
	}
	if root := ne.Uint64(hdr); root != 0 {
		w.pageTree(path, root, depth)
		return
	}
	inline := hdr[boltBucketHeader:]
	if len(inline) < boltPageHeader {
		w.problem(path, "inline page of %d bytes", len(inline))
		return
	}
	if fl := ne.Uint16(inline[8:]); fl != boltLeafFlag {
		w.problem(path, "inline page has flags %#x, want a leaf", fl)
		return
	}
	w.leaf(path, inline, "inline page", depth)
}

// pageTree walks the page id of a bucket and the pages below it.
func (w *walker) pageTree(path []string, id uint64, depth int) {
	if depth > boltMaxDepth {
		w.problem(path, "page %d: nested more than %d deep", id, boltMaxDepth)
		return
	}
	p, err := w.f.page(id, w.hwm)
	if err != nil {
		w.problem(path, "%v", err)
		return
	}
	over := uint64(ne.Uint32(p[12:]))
	for i := id; i <= id+over; i++ {
		if w.seen[i] {
			w.problem(path, "page %d is referenced twice", i)
			return
		}
	}
	for i := id; i <= id+over; i++ {
		w.seen[i] = true
	}
	if w.onPage != nil {
		w.onPage(path, id)
	}
	switch fl := ne.Uint16(p[8:]); fl {
	case boltLeafFlag:
		w.leaf(path, p, fmt.Sprintf("page %d", id), depth)
	case boltBranchFlag:
		n := int(ne.Uint16(p[10:]))
		if n == 0 {
			w.problem(path, "page %d: branch page without elements", id)
			return
		}
		if boltPageHeader+n*boltElemSize > len(p) {
			w.problem(path, "page %d: %d elements do not fit in %d bytes", id, n, len(p))
			return
		}
		var children []uint64
		var prev []byte
		for i := range n {
			e := boltPageHeader + i*boltElemSize
			pos, ksize := uint64(ne.Uint32(p[e:])), uint64(ne.Uint32(p[e+4:]))
			if uint64(e)+pos+ksize > uint64(len(p)) {
				w.problem(path, "page %d: element %d (pos %d, key %d bytes) runs past the page", id, i, pos, ksize)
				return
			}
			k := p[uint64(e)+pos : uint64(e)+pos+ksize]
			if i > 0 && bytes.Compare(prev, k) >= 0 {
				w.problem(path, "page %d: keys out of order at element %d", id, i)
				return
			}
			prev = k
			children = append(children, ne.Uint64(p[e+8:]))
		}
		for _, c := range children {
			w.pageTree(path, c, depth+1)
		}
	default:
		w.problem(path, "page %d: flags %#x, want a branch or leaf page", id, fl)
	}
}

// leaf reads the elements of a leaf page p (a page or an inline page).
func (w *walker) leaf(path []string, p []byte, what string, depth int) {
	n := int(ne.Uint16(p[10:]))
	if boltPageHeader+n*boltElemSize > len(p) {
		w.problem(path, "%s: %d elements do not fit in %d bytes", what, n, len(p))
		return
	}
	type sub struct {
		name []byte
		hdr  []byte
	}
	var subs []sub
	var prev []byte
	for i := range n {
		e := boltPageHeader + i*boltElemSize
		flags := ne.Uint32(p[e:])
		pos, ksize, vsize := uint64(ne.Uint32(p[e+4:])), uint64(ne.Uint32(p[e+8:])), uint64(ne.Uint32(p[e+12:]))
		if flags&^boltBucketLeafFlag != 0 {
			w.problem(path, "%s: element %d has flags %#x", what, i, flags)
			return
		}
		if uint64(e)+pos+ksize+vsize > uint64(len(p)) {
			w.problem(path, "%s: element %d (pos %d, key %d bytes, value %d bytes) runs past the page", what, i, pos, ksize, vsize)
			return
		}
		k := p[uint64(e)+pos : uint64(e)+pos+ksize]
		v := p[uint64(e)+pos+ksize : uint64(e)+pos+ksize+vsize]
		if i > 0 && bytes.Compare(prev, k) >= 0 {
			w.problem(path, "%s: keys out of order at element %d", what, i)
			return
		}
		prev = k
		if flags&boltBucketLeafFlag != 0 {
			subs = append(subs, sub{k, v})
		} else if w.visit != nil {
			w.visit(path, k, v)
		}
	}
	for _, s := range subs {
		w.bucket(append(path[:len(path):len(path)], string(s.name)), s.hdr, depth+1)
	}
}

// checkFile checks the structure of a replica file's bytes as bbolt would
// read them: the meta pages, that the file holds every page the meta page
// counts, every page of every bucket (ids, types, element bounds, key
// order, no page reached twice), and the freelist, when the file has one:
// its ids in range, and every page either reachable or free. It returns nil
// or an error that says what is wrong (without ErrCorrupt; callers add it).
//
// It does not see damage inside a value's bytes (bbolt keeps no checksums of
// its pages); the replica's own decoders refuse what they cannot read.
func checkFile(data []byte) error {
	f, err := parseBoltFile(data)
	if err != nil {
		return err
	}
	m := f.meta
	if m.pgid < 3 || m.pgid > uint64(len(data))/f.ps {
		return fmt.Errorf("meta page %d counts %d pages of %d bytes, the file holds %d bytes (truncated?)", m.page, m.pgid, f.ps, len(data))
	}
	w := &walker{f: f, hwm: m.pgid, seen: map[uint64]bool{0: true, 1: true}}
	freed := map[uint64]bool{}
	if m.freelist != boltNoFreelist {
		ids, err := f.freelistIDs(m.freelist, m.pgid, w.seen)
		if err != nil {
			return err
		}
		for _, id := range ids {
			if id < 2 || id >= m.pgid {
				return fmt.Errorf("freelist: page %d out of range [2, %d)", id, m.pgid)
			}
			if freed[id] {
				return fmt.Errorf("freelist: page %d freed twice", id)
			}
			freed[id] = true
		}
	}
	hdr := binary.NativeEndian.AppendUint64(nil, m.root)
	hdr = binary.NativeEndian.AppendUint64(hdr, m.rootSeq)
	if m.root == 0 {
		return fmt.Errorf("meta page %d: root bucket at page 0", m.page)
	}
	w.bucket(nil, hdr, 0)
	if len(w.problems) > 0 {
		return fmt.Errorf("%s", summarise(w.problems))
	}
	if m.freelist == boltNoFreelist {
		return nil // bbolt rebuilds the freelist from the reachable pages
	}
	for id := uint64(2); id < m.pgid; id++ {
		switch {
		case w.seen[id] && freed[id]:
			return fmt.Errorf("page %d is both in use and free", id)
		case !w.seen[id] && !freed[id]:
			return fmt.Errorf("page %d is neither in use nor free", id)
		}
	}
	return nil
}

// freelistIDs reads the freelist page, marking it (and its overflow) seen.
func (f *boltFile) freelistIDs(id, hwm uint64, seen map[uint64]bool) ([]uint64, error) {
	p, err := f.page(id, hwm)
	if err != nil {
		return nil, fmt.Errorf("freelist: %v", err)
	}
	if fl := ne.Uint16(p[8:]); fl != boltFreelistFlag {
		return nil, fmt.Errorf("freelist: page %d has flags %#x", id, fl)
	}
	for i := id; i <= id+uint64(ne.Uint32(p[12:])); i++ {
		seen[i] = true
	}
	start, n := uint64(boltPageHeader), uint64(ne.Uint16(p[10:]))
	if n == 0xFFFF {
		if len(p) < boltPageHeader+8 {
			return nil, fmt.Errorf("freelist: page %d cut short", id)
		}
		n = ne.Uint64(p[boltPageHeader:])
		start += 8
	}
	if n > (uint64(len(p))-start)/8 {
		return nil, fmt.Errorf("freelist: %d ids do not fit in page %d", n, id)
	}
	ids := make([]uint64, n)
	for i := range ids {
		ids[i] = ne.Uint64(p[start+uint64(i)*8:])
	}
	return ids, nil
}

// summarise joins the first few problems into one message.
func summarise(problems []string) string {
	sort.Strings(problems)
	const max = 3
	if len(problems) <= max {
		return strings.Join(problems, "; ")
	}
	return fmt.Sprintf("%s; and %d more", strings.Join(problems[:max], "; "), len(problems)-max)
}
