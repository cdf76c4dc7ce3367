package postgres

import (
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/dalvdb/dalv/store"
)

// partID is p's value in the partition column of every table: "u:" for a
// user's partition, "s:" for a shared one, then the name. The column is text
// (so Citus can distribute on it and people can read it), which holds no NUL
// byte and, in a UTF-8 database, no invalid UTF-8; such bytes, '%', and the
// newline that separates notification lines are written as %XX. So partIDs
// are distinct for distinct partitions, and "u:alice" stays "u:alice".
func partID(p store.Partition) string {
	var b strings.Builder
	b.Grow(2 + len(p.Name))
	if p.Shared {
		b.WriteString("s:")
	} else {
		b.WriteString("u:")
	}
	for i := 0; i < len(p.Name); {
		c := p.Name[i]
		if c != 0 && c != '%' && c != '\n' && c < utf8.RuneSelf {
			b.WriteByte(c)
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(p.Name[i:])
		if c >= utf8.RuneSelf && (r != utf8.RuneError || n > 1) {
			b.WriteString(p.Name[i : i+n])
			i += n
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
		i++
	}
	return b.String()
}

// parsePartID is the inverse of partID.
func parsePartID(id string) (store.Partition, error) {
	var p store.Partition
	switch {
	case strings.HasPrefix(id, "u:"):
	case strings.HasPrefix(id, "s:"):
		p.Shared = true
	default:
		return p, fmt.Errorf("partition id %q: %w", id, store.ErrCorruption)
	}
	rest := id[2:]
	if !strings.Contains(rest, "%") {
		p.Name = rest
	} else {
		var b strings.Builder
		for i := 0; i < len(rest); i++ {
			if rest[i] != '%' {
				b.WriteByte(rest[i])
				continue
			}
			if i+2 >= len(rest) || unhex(rest[i+1]) < 0 || unhex(rest[i+2]) < 0 {
				return p, fmt.Errorf("partition id %q: bad escape: %w", id, store.ErrCorruption)
			}
			b.WriteByte(byte(unhex(rest[i+1])<<4 | unhex(rest[i+2])))
			i += 2
		}
		p.Name = b.String()
	}
	if p.Name == "" {
		return p, fmt.Errorf("partition id %q: empty name: %w", id, store.ErrCorruption)
	}
	return p, nil
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'A' <= c && c <= 'F':
		return int(c - 'A' + 10)
	}
	return -1
}

// A feed position is the feed key as 8 big-endian bytes, then the partition
// id: records are ordered by (feed_key, part), and feed keys are unique only
// per partition. Compared bytewise, positions order as the SQL row
// (feed_key, part COLLATE "C") does. The zero position (0, "") is the empty
// string, before every record.
func encodePos(key int64, part string) store.FeedPos {
	if key == 0 && part == "" {
		return ""
	}
	b := make([]byte, 8, 8+len(part))
	binary.BigEndian.PutUint64(b, uint64(key))
	return store.FeedPos(append(b, part...))
}

// decodePos is the inverse of encodePos; it fails with an error wrapping
// store.ErrInvalidPos for bytes no position encodes.
func decodePos(pos store.FeedPos) (key int64, part string, err error) {
	if pos == "" {
		return 0, "", nil
	}
	if len(pos) < 8 || pos[0] >= 0x80 {
		return 0, "", fmt.Errorf("feed position %x: %w", string(pos), store.ErrInvalidPos)
	}
	return int64(binary.BigEndian.Uint64([]byte(pos[:8]))), string(pos[8:]), nil
}
