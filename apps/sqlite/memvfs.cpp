// SQLite's operating-system layer for Blimp (SQLite is built with SQLITE_OS_OTHER=1, so it calls
// sqlite3_os_init/sqlite3_os_end from here instead of its own os_unix.c).
//
// Blimp has no file system: "blimp-mem", the one VFS, keeps every file in memory, as a table of
// 64 KiB chunks from the heap (no large contiguous buffer, holes read as zeros). A file lives until
// xDelete (or, opened with SQLITE_OPEN_DELETEONCLOSE, until closed), so a database opened by name
// behaves like a file on a RAM disk: the pager reads and writes it through xRead/xWrite, and its
// page cache (apps/sqlite/pcache.cpp) may drop clean pages, which are read again from here. That
// is what a Linux guest does with a database on its initramfs (ramfs), the comparison point.
//
// Locking is a no-op (one process, SQLITE_THREADSAFE=0), xSync does nothing (nothing to make
// durable), and the device characteristics and sector size are os_unix.c's defaults
// (POWERSAFE_OVERWRITE, 4096), so the pager journals exactly as it does on Linux. Time comes from
// the TSC (kernel/timer.h), counted from the epoch below, which is all speedtest1 needs (it
// measures intervals). Randomness is a fixed-seed generator: reproducible runs.
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "apps/sqlite/sqlite3_blimp.h"
#include "kernel/timer.h"

namespace {

constexpr sqlite3_int64 kChunk = 64 * 1024;

struct MemData {
  char* name;  // nullptr: anonymous (temporary) file
  unsigned char** chunks;
  sqlite3_int64 nchunks;  // entries in `chunks` (allocated or null)
  sqlite3_int64 size;
  int open_count;
  bool delete_on_close;
  MemData* next;
};

struct MemFile {
  sqlite3_file base;
  MemData* data;
};

MemData* g_files = nullptr;
uint64_t g_rng = 0x9e3779b97f4a7c15ull;

MemData* find_file(const char* name) {
  for (MemData* d = g_files; d; d = d->next)
    if (d->name && strcmp(d->name, name) == 0) return d;
  return nullptr;
}

void unlink_file(MemData* d) {
  for (MemData** p = &g_files; *p; p = &(*p)->next) {
    if (*p == d) {
      *p = d->next;
      return;
    }
  }
}

void destroy_file(MemData* d) {
  for (sqlite3_int64 i = 0; i < d->nchunks; i++) free(d->chunks[i]);
  free(d->chunks);
  free(d->name);
  free(d);
}

// Chunk i, allocated (zeroed) when `create`; nullptr if absent (reads as zeros) or out of memory.
unsigned char* chunk(MemData* d, sqlite3_int64 i, bool create) {
  if (i >= d->nchunks) {
    if (!create) return nullptr;
    sqlite3_int64 n = d->nchunks ? d->nchunks : 16;
    while (n <= i) n *= 2;
    auto* c = static_cast<unsigned char**>(realloc(d->chunks, size_t(n) * sizeof(unsigned char*)));
    if (!c) return nullptr;
    memset(c + d->nchunks, 0, size_t(n - d->nchunks) * sizeof(*c));
    d->chunks = c;
    d->nchunks = n;
  }
  if (!d->chunks[i] && create) d->chunks[i] = static_cast<unsigned char*>(calloc(1, kChunk));
  return d->chunks[i];
}

// ---- sqlite3_io_methods ----

int mem_close(sqlite3_file* f) {
  MemData* d = reinterpret_cast<MemFile*>(f)->data;
  if (--d->open_count == 0 && d->delete_on_close) {
    unlink_file(d);
    destroy_file(d);
  }
  return SQLITE_OK;
}

int mem_read(sqlite3_file* f, void* buf, int amount, sqlite3_int64 offset) {
  MemData* d = reinterpret_cast<MemFile*>(f)->data;
  auto* out = static_cast<unsigned char*>(buf);
  int avail = offset >= d->size ? 0 : int(d->size - offset < amount ? d->size - offset : amount);
  for (int done = 0; done < avail;) {
    sqlite3_int64 pos = offset + done;
    int in_chunk = int(kChunk - pos % kChunk);
    int n = avail - done < in_chunk ? avail - done : in_chunk;
    const unsigned char* c = chunk(d, pos / kChunk, false);
    if (c)
      memcpy(out + done, c + pos % kChunk, size_t(n));
    else
      memset(out + done, 0, size_t(n));
    done += n;
  }
  if (avail < amount) {
    memset(out + avail, 0, size_t(amount - avail));  // SQLite requires the tail zeroed
    return SQLITE_IOERR_SHORT_READ;
  }
  return SQLITE_OK;
}

int mem_write(sqlite3_file* f, const void* buf, int amount, sqlite3_int64 offset) {
  MemData* d = reinterpret_cast<MemFile*>(f)->data;
  auto* in = static_cast<const unsigned char*>(buf);
  for (int done = 0; done < amount;) {
    sqlite3_int64 pos = offset + done;
    int in_chunk = int(kChunk - pos % kChunk);
    int n = amount - done < in_chunk ? amount - done : in_chunk;
    unsigned char* c = chunk(d, pos / kChunk, true);
    if (!c) return SQLITE_IOERR_NOMEM;
    memcpy(c + pos % kChunk, in + done, size_t(n));
    done += n;
  }
  if (offset + amount > d->size) d->size = offset + amount;
  return SQLITE_OK;
}

int mem_truncate(sqlite3_file* f, sqlite3_int64 size) {
  MemData* d = reinterpret_cast<MemFile*>(f)->data;
  if (size >= d->size) return SQLITE_OK;
  d->size = size;
  sqlite3_int64 keep = (size + kChunk - 1) / kChunk;  // chunks still (partly) in the file
  for (sqlite3_int64 i = keep; i < d->nchunks; i++) {
    free(d->chunks[i]);
    d->chunks[i] = nullptr;
  }
  // The kept tail of the last chunk must read as zeros if the file grows again.
  if (size % kChunk) {
    unsigned char* c = chunk(d, size / kChunk, false);
    if (c) memset(c + size % kChunk, 0, size_t(kChunk - size % kChunk));
  }
  return SQLITE_OK;
}

int mem_sync(sqlite3_file*, int) { return SQLITE_OK; }

int mem_file_size(sqlite3_file* f, sqlite3_int64* size) {
  *size = reinterpret_cast<MemFile*>(f)->data->size;
  return SQLITE_OK;
}

int mem_lock(sqlite3_file*, int) { return SQLITE_OK; }
int mem_unlock(sqlite3_file*, int) { return SQLITE_OK; }
int mem_check_reserved_lock(sqlite3_file*, int* out) {
  *out = 0;
  return SQLITE_OK;
}
int mem_file_control(sqlite3_file*, int, void*) { return SQLITE_NOTFOUND; }
int mem_sector_size(sqlite3_file*) { return 4096; }
int mem_device_characteristics(sqlite3_file*) { return SQLITE_IOCAP_POWERSAFE_OVERWRITE; }

const sqlite3_io_methods kMemIo = {
    1,  // iVersion: no shared memory (WAL), no mmap
    mem_close,
    mem_read,
    mem_write,
    mem_truncate,
    mem_sync,
    mem_file_size,
    mem_lock,
    mem_unlock,
    mem_check_reserved_lock,
    mem_file_control,
    mem_sector_size,
    mem_device_characteristics,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
};

// ---- sqlite3_vfs ----

int vfs_open(sqlite3_vfs*, const char* name, sqlite3_file* f, int flags, int* out_flags) {
  auto* mf = reinterpret_cast<MemFile*>(f);
  mf->base.pMethods = nullptr;
  MemData* d = name ? find_file(name) : nullptr;
  if (!d) {
    if (!(flags & SQLITE_OPEN_CREATE) && name) return SQLITE_CANTOPEN;
    d = static_cast<MemData*>(calloc(1, sizeof(MemData)));
    if (!d) return SQLITE_NOMEM;
    if (name) {
      d->name = strdup(name);
      if (!d->name) {
        free(d);
        return SQLITE_NOMEM;
      }
    }
    d->next = g_files;
    g_files = d;
  } else if ((flags & SQLITE_OPEN_EXCLUSIVE) && (flags & SQLITE_OPEN_CREATE)) {
    return SQLITE_CANTOPEN;
  }
  if (!name || (flags & SQLITE_OPEN_DELETEONCLOSE)) d->delete_on_close = true;
  d->open_count++;
  mf->data = d;
  mf->base.pMethods = &kMemIo;
  if (out_flags) *out_flags = flags;
  return SQLITE_OK;
}

int vfs_delete(sqlite3_vfs*, const char* name, int) {
  MemData* d = find_file(name);
  if (!d) return SQLITE_IOERR_DELETE_NOENT;
  unlink_file(d);
  if (d->open_count) {
    d->delete_on_close = true;  // unlinked while open: gone when the last handle closes
    d->name[0] = '\0';
    d->next = nullptr;
  } else {
    destroy_file(d);
  }
  return SQLITE_OK;
}

int vfs_access(sqlite3_vfs*, const char* name, int, int* out) {
  *out = find_file(name) != nullptr;
  return SQLITE_OK;
}

int vfs_full_pathname(sqlite3_vfs*, const char* name, int n, char* out) {
  sqlite3_snprintf(n, out, "%s", name);
  return SQLITE_OK;
}

int vfs_randomness(sqlite3_vfs*, int n, char* out) {
  for (int i = 0; i < n; i++) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    out[i] = char(g_rng >> 32);
  }
  return n;
}

int vfs_sleep(sqlite3_vfs*, int microseconds) {
  blimp::timer::sleep_ns(uint64_t(microseconds) * 1000);
  return microseconds;
}

// Julian day number of 2024-01-01T00:00:00Z in milliseconds; the clock counts from there (the
// guest has no wall clock; speedtest1 only measures intervals).
constexpr sqlite3_int64 kEpochJulianMs = 212570827200000ll;

int vfs_current_time_int64(sqlite3_vfs*, sqlite3_int64* out) {
  *out = kEpochJulianMs + sqlite3_int64(blimp::timer::now_ns() / 1000000ull);
  return SQLITE_OK;
}

int vfs_current_time(sqlite3_vfs* vfs, double* out) {
  sqlite3_int64 ms;
  vfs_current_time_int64(vfs, &ms);
  *out = double(ms) / 86400000.0;
  return SQLITE_OK;
}

int vfs_get_last_error(sqlite3_vfs*, int, char*) { return errno; }

sqlite3_vfs g_vfs = {
    2,                // iVersion
    sizeof(MemFile),  // szOsFile
    512,              // mxPathname
    nullptr,          // pNext
    "blimp-mem",      // zName
    nullptr,          // pAppData
    vfs_open,
    vfs_delete,
    vfs_access,
    vfs_full_pathname,
    nullptr,  // xDlOpen (no extensions)
    nullptr,
    nullptr,
    nullptr,
    vfs_randomness,
    vfs_sleep,
    vfs_current_time,
    vfs_get_last_error,
    vfs_current_time_int64,
    nullptr,
    nullptr,
    nullptr,
};

}  // namespace

extern "C" int sqlite3_os_init(void) { return sqlite3_vfs_register(&g_vfs, 1); }
extern "C" int sqlite3_os_end(void) { return SQLITE_OK; }

namespace blimp::sqlite {

uint64_t memvfs_bytes() {
  uint64_t bytes = 0;
  for (MemData* d = g_files; d; d = d->next)
    for (sqlite3_int64 i = 0; i < d->nchunks; i++) bytes += d->chunks[i] ? uint64_t(kChunk) : 0;
  return bytes;
}

}  // namespace blimp::sqlite
