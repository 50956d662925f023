/*
 * pagemesh.h: the C ABI of pagemesh (libpagemesh), a distributed memory manager.
 *
 * Generated from crates/capi/src by cbindgen with crates/capi/cbindgen.toml: do not edit.
 * Regenerate: PAGEMESH_BLESS_HEADER=1 cargo test -p pagemesh-capi --test header
 *
 * Every call returns PAGEMESH_OK (0) or a negative pagemesh_status, except pagemesh_length
 * (0 on error), pagemesh_base (NULL on error), pagemesh_last_error and pagemesh_strerror.
 * After an error, pagemesh_last_error() says what failed, on this thread. A pointer argument
 * that may not be NULL gives PAGEMESH_ERR_NULL when it is. Handles are owned by the caller:
 * a pagemesh_client from pagemesh_connect is freed by pagemesh_disconnect, a
 * pagemesh_mapping from pagemesh_attach by pagemesh_detach. The library keeps no pointer the
 * caller passes in. How to build, link and use it: docs/c-api.md.
 */

#ifndef PAGEMESH_H
#define PAGEMESH_H

#include <stddef.h>
#include <stdint.h>

/**
 * What a pagemesh call returns: `PAGEMESH_OK` (0), or a negative error. After an error,
 * `pagemesh_last_error()` says what failed and what to do.
 */
enum pagemesh_status
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : int32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
  /**
   * Success.
   */
  PAGEMESH_OK = 0,
  /**
   * A pointer argument that may not be NULL was NULL. Nothing was done.
   */
  PAGEMESH_ERR_NULL = -1,
  /**
   * An argument is invalid: a string that is not UTF-8, a name or size the daemon refuses,
   * a buffer that overlaps the segment's own mapping, a timeout over the limit, a barrier or
   * lock on a daemon outside any cluster.
   */
  PAGEMESH_ERR_INVALID = -2,
  /**
   * The daemon cannot be reached, or the connection to it broke during the call (the next
   * call on the client connects again).
   */
  PAGEMESH_ERR_CONNECT = -3,
  /**
   * No segment (or volume, or partition) of that name.
   */
  PAGEMESH_ERR_NOT_FOUND = -4,
  /**
   * A segment of that name exists already.
   */
  PAGEMESH_ERR_EXISTS = -5,
  /**
   * The byte range is outside the mapped segment (`pagemesh_read_at`, `pagemesh_write_at`:
   * checked in this process). The calls whose range the daemon checks (segment I/O, pin,
   * unpin) give `PAGEMESH_ERR_INVALID` for a range outside the segment.
   */
  PAGEMESH_ERR_RANGE = -6,
  /**
   * The daemon's I/O failed (the backing file, the catalog).
   */
  PAGEMESH_ERR_IO = -7,
  /**
   * The range holds poisoned pages (their data is lost; `pagemesh segment clear-poison`).
   */
  PAGEMESH_ERR_POISONED = -8,
  /**
   * A bounded wait ended: the daemon did not answer in time, or a barrier or lock was not
   * reached within its timeout.
   */
  PAGEMESH_ERR_TIMED_OUT = -9,
  /**
   * The daemon answered something this library does not understand (version mismatch,
   * malformed or unexpected reply).
   */
  PAGEMESH_ERR_PROTOCOL = -10,
  /**
   * Mapping the segment into this process failed (mmap, userfaultfd: run as root or give
   * access to /dev/userfaultfd).
   */
  PAGEMESH_ERR_ATTACH = -11,
  /**
   * A bug: the daemon's internal error, or a panic caught inside this library.
   */
  PAGEMESH_ERR_INTERNAL = -12,
  /**
   * The daemon has too many connections (from this user, or in all): nothing was done; try
   * again later.
   */
  PAGEMESH_ERR_BUSY = -13,
  /**
   * The segment is in use (attached by a process): nothing was done.
   */
  PAGEMESH_ERR_IN_USE = -14,
  /**
   * The caller may not do this (e.g. a file-backed segment by a user other than root).
   */
  PAGEMESH_ERR_PERMISSION = -15,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum pagemesh_status pagemesh_status;
#else
typedef int32_t pagemesh_status;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

/**
 * What a segment is backed by (`pagemesh_segment_stat.backing`).
 */
enum pagemesh_backing
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : uint32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
  /**
   * Anonymous memory: dormant pages read as zero.
   */
  PAGEMESH_BACKING_ZERO = 0,
  /**
   * A file: read on first access, dirty pages written back on sync.
   */
  PAGEMESH_BACKING_FILE = 1,
  /**
   * A read-only volume image; writes stay private to the writing process.
   */
  PAGEMESH_BACKING_VOLUME = 2,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum pagemesh_backing pagemesh_backing;
#else
typedef uint32_t pagemesh_backing;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

/**
 * A connection to the node daemon (opaque). Made by `pagemesh_connect`, freed by
 * `pagemesh_disconnect`. May be used from several threads at once; its requests are served
 * one at a time (a thread waiting at a barrier or for a lock holds the others up: give such a
 * thread a client of its own).
 */
typedef struct pagemesh_client pagemesh_client;

/**
 * A segment mapped into this process (opaque). Made by `pagemesh_attach`, unmapped and freed
 * by `pagemesh_detach`. May be used from several threads at once.
 */
typedef struct pagemesh_mapping pagemesh_mapping;

/**
 * A segment's figures on this node (`pagemesh_stat`). The struct is plain data, filled by the
 * library in memory the caller owns.
 */
typedef struct {
  /**
   * The segment's id in the catalog.
   */
  uint64_t id;
  /**
   * Its size in bytes.
   */
  uint64_t size_bytes;
  /**
   * The node that runs its directory for a cluster segment; -1 for a node-local segment.
   */
  int64_t home_node;
  /**
   * Pages held in this node's memory.
   */
  uint64_t resident_pages;
  /**
   * Resident pages written since they were last written back.
   */
  uint64_t dirty_pages;
  /**
   * Pages whose data is lost: an access raises SIGBUS.
   */
  uint64_t poisoned_pages;
  /**
   * Pages that are never evicted.
   */
  uint64_t pinned_pages;
  /**
   * Pages on the node's paging device.
   */
  uint64_t paged_pages;
  /**
   * Processes that have the segment attached on this node.
   */
  uint64_t attached_clients;
  /**
   * Faults on pages absent from the node's memory.
   */
  uint64_t faults_missing;
  /**
   * Faults on pages in the node's memory but not yet mapped by the process.
   */
  uint64_t faults_minor;
  /**
   * Write faults on write-protected pages.
   */
  uint64_t faults_wp;
  /**
   * Dormant pages given as zero pages.
   */
  uint64_t zero_fills;
  /**
   * Reads from the backing store, and their bytes.
   */
  uint64_t mapper_reads;
  uint64_t mapper_bytes_read;
  /**
   * Bytes written back to the backing store.
   */
  uint64_t mapper_bytes_written;
  /**
   * Pages evicted, paged in and paged out under memory pressure.
   */
  uint64_t evictions;
  uint64_t page_ins;
  uint64_t page_outs;
  /**
   * Pages read ahead of sequential readers.
   */
  uint64_t prefetched;
  /**
   * Pages poisoned so far, and syncs served.
   */
  uint64_t poisonings;
  uint64_t syncs;
  /**
   * Fault service time in the daemon: upper bounds of the 50th and 99th percentiles, in
   * nanoseconds (0 when there were no faults).
   */
  uint64_t fault_service_p50_ns;
  uint64_t fault_service_p99_ns;
  /**
   * What backs the segment: a `pagemesh_backing`.
   */
  pagemesh_backing backing;
} pagemesh_segment_stat;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * Connect to the daemon at `socket_path`, or, if `socket_path` is NULL, at
 * `$PAGEMESH_SOCKET`, or at `/run/pagemesh/pagemesh.sock`. On success `*out` is a new client
 * that the caller owns and frees with `pagemesh_disconnect`; on failure `*out` is NULL.
 *
 * # Safety
 *
 * `socket_path` is NULL or a NUL-terminated string; `out` is NULL or valid for writing a
 * pointer. The library keeps neither pointer.
 */
pagemesh_status pagemesh_connect(const char *socket_path, pagemesh_client **out);

/**
 * Free a client; `client` is invalid afterwards. Mappings attached through it stay attached.
 * Its connection to the daemon closes, releasing the locks it holds, once no mapping attached
 * through it remains (a mapping keeps the client's connection for as long as it lives).
 *
 * # Safety
 *
 * `client` is NULL or a handle from `pagemesh_connect` not yet disconnected, which no other
 * thread is using.
 */
pagemesh_status pagemesh_disconnect(pagemesh_client *client);

/**
 * Create segment `name` of `size_bytes` bytes. `backing_file` NULL: anonymous memory whose
 * pages read as zero until written (`size_bytes` at least 1); otherwise the path of a file the
 * daemon pages the segment from and writes back to on sync (`size_bytes` 0: the file's size).
 * A relative path is taken from this process's working directory.
 *
 * # Safety
 *
 * `client` is NULL or a live client; `name` and `backing_file` are NULL or NUL-terminated
 * strings. The library keeps none of the pointers.
 */
pagemesh_status pagemesh_create(const pagemesh_client *client,
                                const char *name,
                                uint64_t size_bytes,
                                const char *backing_file);

/**
 * Remove segment `name` from the catalog. A file segment's dirty pages are written back first
 * and its file stays. Fails while a process has the segment attached.
 *
 * # Safety
 *
 * `client` is NULL or a live client; `name` is NULL or a NUL-terminated string.
 */
pagemesh_status pagemesh_remove(const pagemesh_client *client, const char *name);

/**
 * Fill `*out` with segment `name`'s figures on this node.
 *
 * # Safety
 *
 * `client` is NULL or a live client; `name` is NULL or a NUL-terminated string; `out` is NULL
 * or valid for writing a `pagemesh_segment_stat` (the caller's memory; the library keeps no
 * pointer to it).
 */
pagemesh_status pagemesh_stat(const pagemesh_client *client,
                              const char *name,
                              pagemesh_segment_stat *out);

/**
 * Write a file segment's dirty pages to its file and fsync: they are durable when this
 * returns `PAGEMESH_OK`. `*pages_written` (if `pages_written` is not NULL) is how many pages
 * were written. A segment without a file writes nothing.
 *
 * # Safety
 *
 * `client` is NULL or a live client; `name` is NULL or a NUL-terminated string;
 * `pages_written` is NULL or valid for writing a `uint64_t`.
 */
pagemesh_status pagemesh_sync(const pagemesh_client *client,
                              const char *name,
                              uint64_t *pages_written);

/**
 * Fault in and pin `[offset, offset + len)` of segment `name`: those pages are never evicted
 * until unpinned. `*pages` (if `pages` is not NULL) is how many pages were newly pinned.
 * Node-local segments only (a cluster segment refuses with `PAGEMESH_ERR_INVALID`); a range
 * outside the segment is `PAGEMESH_ERR_INVALID` (the daemon checks it).
 *
 * # Safety
 *
 * `client` is NULL or a live client; `name` is NULL or a NUL-terminated string; `pages` is
 * NULL or valid for writing a `uint64_t`.
 */
pagemesh_status pagemesh_pin(const pagemesh_client *client,
                             const char *name,
                             uint64_t offset,
                             uint64_t len,
                             uint64_t *pages);

/**
 * Unpin `[offset, offset + len)` of segment `name`. `*pages` (if `pages` is not NULL) is how
 * many pages were unpinned.
 *
 * # Safety
 *
 * As for `pagemesh_pin`.
 */
pagemesh_status pagemesh_unpin(const pagemesh_client *client,
                               const char *name,
                               uint64_t offset,
                               uint64_t len,
                               uint64_t *pages);

/**
 * Read `len` bytes at `offset` of segment `name` into `buf`, through the node's page cache
 * without attaching it (segment I/O: coherent with every mapping of the segment). A range
 * outside the segment is `PAGEMESH_ERR_INVALID` (the daemon checks it).
 *
 * # Safety
 *
 * `client` is NULL or a live client; `name` is NULL or a NUL-terminated string; `buf` is NULL
 * or `len` writable bytes of the caller's (the library keeps no pointer to them).
 */
pagemesh_status pagemesh_segment_read(const pagemesh_client *client,
                                      const char *name,
                                      uint64_t offset,
                                      void *buf,
                                      size_t len);

/**
 * Write the `len` bytes at `data` at `offset` of segment `name`, through the node's page
 * cache without attaching it. A range outside the segment is `PAGEMESH_ERR_INVALID`.
 *
 * # Safety
 *
 * `client` is NULL or a live client; `name` is NULL or a NUL-terminated string; `data` is
 * NULL or `len` readable bytes of the caller's (the library keeps no pointer to them).
 */
pagemesh_status pagemesh_segment_write(const pagemesh_client *client,
                                       const char *name,
                                       uint64_t offset,
                                       const void *data,
                                       size_t len);

/**
 * Wait at barrier number `barrier` of cluster segment `segment` until `parties` processes (on
 * any nodes) arrived, for at most `timeout_ms` milliseconds (at most one day). Served by the
 * segment's home node; a daemon outside any cluster refuses with `PAGEMESH_ERR_INVALID`.
 * `*round` (if `round` is not NULL) is the barrier's round, from 1.
 *
 * # Safety
 *
 * `client` is NULL or a live client; `segment` is NULL or a NUL-terminated string; `round` is
 * NULL or valid for writing a `uint64_t`.
 */
pagemesh_status pagemesh_barrier(const pagemesh_client *client,
                                 const char *segment,
                                 uint32_t barrier,
                                 uint32_t parties,
                                 uint64_t timeout_ms,
                                 uint64_t *round);

/**
 * Take lock number `lock` of cluster segment `segment` (FIFO, served by its home node),
 * waiting at most `timeout_ms` milliseconds (at most one day). It is held until
 * `pagemesh_unlock` or until the client is disconnected.
 *
 * # Safety
 *
 * `client` is NULL or a live client; `segment` is NULL or a NUL-terminated string.
 */
pagemesh_status pagemesh_lock(const pagemesh_client *client,
                              const char *segment,
                              uint32_t lock,
                              uint64_t timeout_ms);

/**
 * Release lock number `lock` of cluster segment `segment`, taken by `pagemesh_lock` on this
 * client.
 *
 * # Safety
 *
 * `client` is NULL or a live client; `segment` is NULL or a NUL-terminated string.
 */
pagemesh_status pagemesh_unlock(const pagemesh_client *client, const char *segment, uint32_t lock);

/**
 * The message of the last failed pagemesh call on this thread: what failed, and what to do.
 * An empty string if the last call succeeded. Never NULL.
 *
 * Ownership: the string belongs to the library; do not free it. It stays valid until the
 * next pagemesh call on the same thread (copy it to keep it).
 */
const char *pagemesh_last_error(void);

/**
 * Map segment `name` into this process. Every access to the memory is served by the daemon;
 * if the daemon goes away, every later access to a page not yet in this process raises SIGBUS
 * (never silent zeros, never a hang). On success `*out` is a new mapping that the caller owns
 * and frees with `pagemesh_detach`; it does not depend on `client` (which may be disconnected
 * first). On failure `*out` is NULL.
 *
 * # Safety
 *
 * `client` is NULL or a live client; `name` is NULL or a NUL-terminated string; `out` is NULL
 * or valid for writing a pointer. The library keeps none of the pointers.
 */
pagemesh_status pagemesh_attach(const pagemesh_client *client,
                                const char *name,
                                pagemesh_mapping **out);

/**
 * Unmap the segment and free the mapping. The memory at `pagemesh_base` is gone afterwards:
 * any pointer into it is invalid. Dirty pages stay in the node's page cache (use
 * `pagemesh_sync` to make a file segment's durable).
 *
 * # Safety
 *
 * `mapping` is NULL or a handle from `pagemesh_attach` not yet detached, which no other
 * thread is using.
 */
pagemesh_status pagemesh_detach(pagemesh_mapping *mapping);

/**
 * The segment's size in bytes; 0 if `mapping` is NULL (a segment has at least one byte).
 *
 * # Safety
 *
 * `mapping` is NULL or a live mapping.
 */
uint64_t pagemesh_length(const pagemesh_mapping *mapping);

/**
 * The start of the segment's memory in this process, valid until `pagemesh_detach`: plain
 * memory for loads, stores and atomics, shared with every process that attached the segment
 * (on a volume segment, writes stay in this process). The mapping is whole pages: the bytes
 * past `pagemesh_length` up to the page's end are addressable but not part of the segment.
 * NULL if `mapping` is NULL.
 *
 * # Safety
 *
 * `mapping` is NULL or a live mapping.
 */
void *pagemesh_base(const pagemesh_mapping *mapping);

/**
 * Copy `len` bytes at `offset` of the mapped segment into `buf` (page faults served as for
 * any access). `PAGEMESH_ERR_RANGE` if the range is not inside the segment.
 *
 * # Safety
 *
 * `mapping` is NULL or a live mapping; `buf` is NULL or `len` writable bytes of the caller's.
 * `buf` may not overlap the mapping (refused with `PAGEMESH_ERR_INVALID`).
 */
pagemesh_status pagemesh_read_at(const pagemesh_mapping *mapping,
                                 uint64_t offset,
                                 void *buf,
                                 size_t len);

/**
 * Copy the `len` bytes at `data` into the mapped segment at `offset`. `PAGEMESH_ERR_RANGE` if
 * the range is not inside the segment.
 *
 * # Safety
 *
 * `mapping` is NULL or a live mapping; `data` is NULL or `len` readable bytes of the caller's.
 * `data` may not overlap the mapping (refused with `PAGEMESH_ERR_INVALID`).
 */
pagemesh_status pagemesh_write_at(const pagemesh_mapping *mapping,
                                  uint64_t offset,
                                  const void *data,
                                  size_t len);

/**
 * The name of a status (`"PAGEMESH_ERR_NOT_FOUND"`, or `"unknown pagemesh status"` for a
 * number that is none). The string is static: never free it.
 */
const char *pagemesh_strerror(int status);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* PAGEMESH_H */
