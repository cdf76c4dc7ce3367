package pebble

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
)

// Usage is what a data directory holds and what it takes on disk.
type Usage struct {
	// DirBytes is the size of the directory's files.
	DirBytes int64
	// LiveKeys and Tombstones count the partitions' keys; FeedRecords the
	// retained commits of the change feed.
	LiveKeys, Tombstones, FeedRecords int64
	// KeptBytes is the encoded size of what the store keeps: each entry's
	// key and stored value and each feed record, as Pebble holds them,
	// without the indexes, heads and device records beside them.
	KeptBytes int64
}

// Inspect opens the store in dir (which no process may hold) and counts
// what it keeps. DirBytes is the directory as it was found, before the open
// replays the WAL; with compact, it is the directory after compacting the
// whole key space, so that the figure is the layout's rather than the write
// history's.
func Inspect(dir string, compact bool) (Usage, error) {
	found, err := dirBytes(dir)
	if err != nil {
		return Usage{}, fmt.Errorf("inspect %s: %w", dir, err)
	}
	s, err := Open(dir, Options{})
	if err != nil {
		return Usage{}, err
	}
	u, err := s.inspect(compact)
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Usage{}, fmt.Errorf("inspect %s: %w", dir, err)
	}
	u.DirBytes = found
	if compact {
		if u.DirBytes, err = dirBytes(dir); err != nil {
			return Usage{}, fmt.Errorf("inspect %s: %w", dir, err)
		}
	}
	return u, nil
}

func (s *Store) inspect(compact bool) (Usage, error) {
	var u Usage
	if compact {
		// Every key sorts below 0xff: kinds are ASCII letters.
		if err := s.db.Compact(context.Background(), []byte{0}, []byte{0xff}, true); err != nil {
			return u, fmt.Errorf("compact: %w", err)
		}
	}
	it, err := s.db.NewIter(nil)
	if err != nil {
		return u, err
	}
	for it.First(); it.Valid(); it.Next() {
		k, v := it.Key(), it.Value()
		switch k[0] {
		case kindEntry:
			h, _, err := decodeEntryHeader(v)
			if err != nil {
				return u, errors.Join(err, it.Close())
			}
			if h.deleted {
				u.Tombstones++
			} else {
				u.LiveKeys++
			}
			u.KeptBytes += int64(len(k) + len(v))
		case kindFeed:
			u.FeedRecords++
			u.KeptBytes += int64(len(k) + len(v))
		}
	}
	return u, it.Close()
}

// dirBytes is the size of the files under dir.
func dirBytes(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n += info.Size()
		return nil
	})
	return n, err
}
