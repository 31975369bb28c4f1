// SQLite's page cache (SQLITE_CONFIG_PCACHE2) on Blimp's cooperative memory, registered with the
// page allocator as a shrinker.
//
// Each cached database page's buffer is a whole naturally aligned block from the page allocator
// (4 KiB for SQLite's default page size, Owner::App), so a page the cache drops is a page the
// allocator, and through it the balloon, gets back whole. The bookkeeping (this file's header
// plus SQLite's per-page "extra" bytes) comes from the heap.
//
// What may be dropped: SQLite unpins a page (xUnpin) only when it holds no reference to it and it
// is clean (dirty pages stay pinned until written to the VFS), so an unpinned page of a purgeable
// cache is a copy of what the database file holds, and dropping it costs one cache miss: the
// pager reads it again through the VFS (apps/sqlite/memvfs.cpp). Non-purgeable caches (":memory:"
// databases, TEMP stores kept in memory) ARE the data: they are never unpinned and never shrunk.
//
// Pressure: count_objects() is the unpinned pages (kept as a counter: it is called from the
// allocator's stats()); scan_objects(n) drops up to n pages' worth, least recently unpinned first,
// from each cache in turn. The allocator calls it from the allocating context (any malloc or
// xFetch while memory is short or the balloon has posted a demand), never from an interrupt, and
// SQLite is single-threaded here (SQLITE_THREADSAFE=0): the only reentrancy is an allocation made
// by this file itself, which is why xFetch allocates before it touches any list, and a resized hash
// table is allocated before the old one is read. xFetch also offers a reclaim point, so a warm
// cache that recycles its own pages instead of allocating still answers the balloon.
//
// Limits: SQLite's cache_size (xCachesize) caps each cache as pcache1 does: at the cap a new page
// reuses the cache's least recently unpinned one; createFlag 2 may go past it.
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "apps/sqlite/sqlite3_blimp.h"
#include "kernel/memory.h"
#include "mm/mm.h"

namespace {

using namespace blimp;

struct Cache;

struct PPage {
  sqlite3_pcache_page page;  // first: SQLite hands this pointer back
  unsigned key;
  bool pinned;
  Cache* cache;
  PPage* hash_next;
  PPage* lru_prev;  // towards the most recently unpinned
  PPage* lru_next;  // towards the least recently unpinned
  // SQLite's szExtra bytes follow (pExtra), 8-byte aligned.
};

struct Cache {
  int sz_page;
  int sz_extra;
  bool purgeable;
  unsigned order;      // of the page allocator block holding a buffer
  unsigned max_pages;  // xCachesize
  unsigned npages;     // pinned + unpinned
  unsigned nunpinned;
  unsigned nbuckets;  // power of two
  PPage** buckets;
  PPage* lru_head;
  PPage* lru_tail;
  Cache* next;  // all caches
};

Cache* g_caches = nullptr;
Cache* g_scan_from = nullptr;  // round robin start for the shrinker

class PcacheShrinker final : public mm::Shrinker {
 public:
  size_t count_objects() override { return unpinned_pages; }
  size_t scan_objects(size_t nr_pages) override;

  // All counters in allocator pages (4 KiB), except the fetch counters.
  size_t unpinned_pages = 0;
  size_t held_pages = 0;
  uint64_t shrunk_pages = 0;
  uint64_t scans = 0;
  uint64_t fetches = 0, hits = 0, misses = 0, alloc_failures = 0;
};

PcacheShrinker g_shrinker;
bool g_registered = false;

unsigned pages_of(const Cache* c) { return 1u << c->order; }

PPage*& bucket(Cache* c, unsigned key) { return c->buckets[key & (c->nbuckets - 1)]; }

void lru_unlink(Cache* c, PPage* p) {
  if (p->lru_prev)
    p->lru_prev->lru_next = p->lru_next;
  else
    c->lru_head = p->lru_next;
  if (p->lru_next)
    p->lru_next->lru_prev = p->lru_prev;
  else
    c->lru_tail = p->lru_prev;
  p->lru_prev = p->lru_next = nullptr;
}

void lru_push(Cache* c, PPage* p) {  // most recently unpinned end
  p->lru_prev = nullptr;
  p->lru_next = c->lru_head;
  if (c->lru_head) c->lru_head->lru_prev = p;
  c->lru_head = p;
  if (!c->lru_tail) c->lru_tail = p;
}

void hash_unlink(Cache* c, PPage* p) {
  PPage** pp = &bucket(c, p->key);
  while (*pp != p) pp = &(*pp)->hash_next;
  *pp = p->hash_next;
}

void pin(Cache* c, PPage* p) {
  if (p->pinned) return;
  lru_unlink(c, p);
  p->pinned = true;
  c->nunpinned--;
  g_shrinker.unpinned_pages -= pages_of(c);
}

// Removes a page from its cache and gives its memory back.
void drop(Cache* c, PPage* p) {
  if (!p->pinned) {
    lru_unlink(c, p);
    c->nunpinned--;
    g_shrinker.unpinned_pages -= pages_of(c);
  }
  hash_unlink(c, p);
  c->npages--;
  g_shrinker.held_pages -= pages_of(c);
  mm::pages().free_pages(virt_to_phys(p->page.pBuf), c->order);
  free(p);
}

size_t shrink_cache(Cache* c, size_t want_pages) {
  size_t freed = 0;
  while (freed < want_pages && c->lru_tail) {
    drop(c, c->lru_tail);
    freed += pages_of(c);
  }
  return freed;
}

size_t PcacheShrinker::scan_objects(size_t nr_pages) {
  scans++;
  size_t freed = 0;
  // Round robin over the caches, so one database's cache does not always pay for all of them.
  Cache* start = g_scan_from ? g_scan_from : g_caches;
  for (Cache* c = start; c && freed < nr_pages; c = c->next)
    freed += shrink_cache(c, nr_pages - freed);
  for (Cache* c = g_caches; c && c != start && freed < nr_pages; c = c->next)
    freed += shrink_cache(c, nr_pages - freed);
  g_scan_from = start && start->next ? start->next : g_caches;
  shrunk_pages += freed;
  return freed;
}

// Grows the hash table to at least one bucket per page (allocating first: see the top).
void maybe_grow(Cache* c) {
  if (c->npages < c->nbuckets) return;
  unsigned n = c->nbuckets * 2;
  auto* fresh = static_cast<PPage**>(calloc(n, sizeof(PPage*)));
  if (!fresh) return;  // longer chains, still correct
  for (unsigned i = 0; i < c->nbuckets; i++) {
    for (PPage* p = c->buckets[i]; p;) {
      PPage* next = p->hash_next;
      p->hash_next = fresh[p->key & (n - 1)];
      fresh[p->key & (n - 1)] = p;
      p = next;
    }
  }
  free(c->buckets);
  c->buckets = fresh;
  c->nbuckets = n;
}

// ---- sqlite3_pcache_methods2 ----

int pc_init(void*) {
  if (!g_registered) {
    mm::pages().register_shrinker(&g_shrinker);
    g_registered = true;
  }
  return SQLITE_OK;
}

void pc_shutdown(void*) {
  if (g_registered) {
    mm::pages().unregister_shrinker(&g_shrinker);
    g_registered = false;
  }
}

sqlite3_pcache* pc_create(int sz_page, int sz_extra, int purgeable) {
  auto* c = static_cast<Cache*>(calloc(1, sizeof(Cache)));
  if (!c) return nullptr;
  c->sz_page = sz_page;
  c->sz_extra = (sz_extra + 7) & ~7;
  c->purgeable = purgeable != 0;
  while ((uint64_t(kPageSize) << c->order) < uint64_t(sz_page)) c->order++;
  c->max_pages = 100;
  c->nbuckets = 64;
  c->buckets = static_cast<PPage**>(calloc(c->nbuckets, sizeof(PPage*)));
  if (!c->buckets) {
    free(c);
    return nullptr;
  }
  c->next = g_caches;
  g_caches = c;
  return reinterpret_cast<sqlite3_pcache*>(c);
}

void pc_cachesize(sqlite3_pcache* pc, int n) {
  auto* c = reinterpret_cast<Cache*>(pc);
  c->max_pages = n > 0 ? unsigned(n) : 1;
  while (c->purgeable && c->npages > c->max_pages && c->lru_tail) drop(c, c->lru_tail);
}

int pc_pagecount(sqlite3_pcache* pc) { return int(reinterpret_cast<Cache*>(pc)->npages); }

sqlite3_pcache_page* pc_fetch(sqlite3_pcache* pc, unsigned key, int create) {
  auto* c = reinterpret_cast<Cache*>(pc);
  g_shrinker.fetches++;
  for (PPage* p = bucket(c, key); p; p = p->hash_next) {
    if (p->key == key) {
      g_shrinker.hits++;
      pin(c, p);
      return &p->page;
    }
  }
  g_shrinker.misses++;
  if (create == 0) return nullptr;
  // Before anything is half-done: a pending balloon demand may shrink the caches here.
  mm::pages().reclaim_point();

  PPage* p = nullptr;
  if (c->purgeable && c->npages >= c->max_pages && c->lru_tail) {
    // At the cap: reuse the least recently unpinned page (as pcache1 does).
    p = c->lru_tail;
    lru_unlink(c, p);
    hash_unlink(c, p);
    c->nunpinned--;
    g_shrinker.unpinned_pages -= pages_of(c);
  } else {
    if (create == 1 && c->npages >= c->max_pages) return nullptr;
    // Allocations may run the shrinker (this cache included): nothing is linked yet.
    auto block = mm::pages().alloc_pages(c->order, mm::Owner::App);
    if (block.is_error()) {
      g_shrinker.alloc_failures++;
      return nullptr;
    }
    p = static_cast<PPage*>(malloc(sizeof(PPage) + size_t(c->sz_extra)));
    if (!p) {
      mm::pages().free_pages(block.value(), c->order);
      g_shrinker.alloc_failures++;
      return nullptr;
    }
    p->page.pBuf = phys_to_virt<void>(block.value());
    p->page.pExtra = p + 1;
    p->cache = c;
    maybe_grow(c);
    c->npages++;
    g_shrinker.held_pages += pages_of(c);
  }
  memset(p->page.pExtra, 0, size_t(c->sz_extra));  // SQLite expects a new page's extra zeroed
  p->key = key;
  p->pinned = true;
  p->lru_prev = p->lru_next = nullptr;
  PPage*& b = bucket(c, key);
  p->hash_next = b;
  b = p;
  return &p->page;
}

void pc_unpin(sqlite3_pcache* pc, sqlite3_pcache_page* page, int discard) {
  auto* c = reinterpret_cast<Cache*>(pc);
  auto* p = reinterpret_cast<PPage*>(page);
  if (discard || !c->purgeable) {
    // A non-purgeable cache only unpins to delete (SQLite's contract for bPurgeable=0).
    drop(c, p);
    return;
  }
  if (!p->pinned) return;
  p->pinned = false;
  lru_push(c, p);
  c->nunpinned++;
  g_shrinker.unpinned_pages += pages_of(c);
  if (c->npages > c->max_pages) drop(c, c->lru_tail);
}

void pc_rekey(sqlite3_pcache* pc, sqlite3_pcache_page* page, unsigned old_key, unsigned new_key) {
  auto* c = reinterpret_cast<Cache*>(pc);
  auto* p = reinterpret_cast<PPage*>(page);
  (void)old_key;
  // SQLite guarantees no page has new_key, except possibly an unpinned one it wants discarded.
  for (PPage* q = bucket(c, new_key); q; q = q->hash_next) {
    if (q->key == new_key && q != p) {
      drop(c, q);
      break;
    }
  }
  hash_unlink(c, p);
  p->key = new_key;
  PPage*& b = bucket(c, new_key);
  p->hash_next = b;
  b = p;
}

void pc_truncate(sqlite3_pcache* pc, unsigned limit) {
  auto* c = reinterpret_cast<Cache*>(pc);
  for (unsigned i = 0; i < c->nbuckets; i++) {
    for (PPage* p = c->buckets[i]; p;) {
      PPage* next = p->hash_next;
      if (p->key >= limit) drop(c, p);  // pinned ones are implicitly unpinned
      p = next;
    }
  }
}

void pc_destroy(sqlite3_pcache* pc) {
  auto* c = reinterpret_cast<Cache*>(pc);
  pc_truncate(pc, 0);
  for (Cache** cc = &g_caches; *cc; cc = &(*cc)->next) {
    if (*cc == c) {
      *cc = c->next;
      break;
    }
  }
  if (g_scan_from == c) g_scan_from = nullptr;
  free(c->buckets);
  free(c);
}

void pc_shrink(sqlite3_pcache* pc) {
  auto* c = reinterpret_cast<Cache*>(pc);
  while (c->lru_tail) drop(c, c->lru_tail);
}

const sqlite3_pcache_methods2 kMethods = {
    1,        // iVersion
    nullptr,  // pArg
    pc_init,  pc_shutdown, pc_create,   pc_cachesize, pc_pagecount, pc_fetch,
    pc_unpin, pc_rekey,    pc_truncate, pc_destroy,   pc_shrink,
};

}  // namespace

namespace blimp::sqlite {

int install_pcache() { return sqlite3_config(SQLITE_CONFIG_PCACHE2, &kMethods); }

PcacheStats pcache_stats() {
  PcacheStats s;
  s.held_pages = g_shrinker.held_pages;
  s.unpinned_pages = g_shrinker.unpinned_pages;
  s.shrunk_pages = g_shrinker.shrunk_pages;
  s.scans = g_shrinker.scans;
  s.fetches = g_shrinker.fetches;
  s.hits = g_shrinker.hits;
  s.misses = g_shrinker.misses;
  s.alloc_failures = g_shrinker.alloc_failures;
  return s;
}

}  // namespace blimp::sqlite
