package pebble

import (
	"sync"

	"github.com/dalvdb/dalv/store"
)

// headCacheSize bounds the heads a [headCache] keeps. A head is a few
// dozen bytes (versions and up to maxHeadDevices device batches), so the
// cache holds well under a megabyte.
const headCacheSize = 4096

// headCache keeps the heads of the partitions Updates read and wrote most
// recently, so that an Update of a partition written a moment ago reads its
// head from memory instead of from Pebble (a point read was about a
// twentieth of a sync's CPU). A partition's head is written, and read or
// filled into the cache by an Update, only under the partition's lock, so a
// head in the cache is the one in the database. Views read their snapshot,
// never the cache: it may be newer.
type headCache struct {
	mu sync.Mutex
	m  map[store.Partition]*cachedHead
	// limit is the most heads kept; 0 means headCacheSize.
	limit int
}

// cachedHead is a partition's decoded head record (see encodeHead).
type cachedHead struct {
	head    store.Head
	feedSeq uint64
	devs    []byte
}

// get copies p's cached head into r and reports whether there was one. The
// caller holds p's lock.
func (c *headCache) get(p store.Partition, r *reader) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.m[p]
	if h == nil {
		return false
	}
	r.head, r.feedSeq, r.headDevs = h.head, h.feedSeq, append(r.headDevs[:0], h.devs...)
	return true
}

// put caches p's head. When the cache is full it forgets another
// partition's, whichever the map's iteration meets first. The caller
// holds p's lock.
func (c *headCache) put(p store.Partition, head store.Head, feedSeq uint64, devs []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.m[p]
	if h == nil {
		if c.m == nil {
			c.m = make(map[store.Partition]*cachedHead)
		}
		limit := c.limit
		if limit == 0 {
			limit = headCacheSize
		}
		for q, old := range c.m {
			if len(c.m) < limit {
				break
			}
			delete(c.m, q)
			h = old
		}
		if h == nil {
			h = new(cachedHead)
		}
		c.m[p] = h
	}
	h.head, h.feedSeq, h.devs = head, feedSeq, append(h.devs[:0], devs...)
}

// drop forgets p's head. The caller holds p's lock.
func (c *headCache) drop(p store.Partition) {
	c.mu.Lock()
	delete(c.m, p)
	c.mu.Unlock()
}
