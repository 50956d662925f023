//! A connection to the node daemon and the calls that name a segment: create, remove, stat,
//! sync, pin, segment I/O, barriers and locks.

use std::ffi::{c_char, c_void};
use std::path::Path;

use pagemesh::{Backing, Client, SegmentStat};

use crate::args;
use crate::guard;
use crate::status::{pagemesh_backing, pagemesh_status, Failure};

/// A connection to the node daemon (opaque). Made by `pagemesh_connect`, freed by
/// `pagemesh_disconnect`. May be used from several threads at once; its requests are served
/// one at a time (a thread waiting at a barrier or for a lock holds the others up: give such a
/// thread a client of its own).
pub struct pagemesh_client {
    client: Client,
}

impl pagemesh_client {
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }
}

/// A segment's figures on this node (`pagemesh_stat`). The struct is plain data, filled by the
/// library in memory the caller owns.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct pagemesh_segment_stat {
    /// The segment's id in the catalog.
    pub id: u64,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// The node that runs its directory for a cluster segment; -1 for a node-local segment.
    pub home_node: i64,
    /// Pages held in this node's memory.
    pub resident_pages: u64,
    /// Resident pages written since they were last written back.
    pub dirty_pages: u64,
    /// Pages whose data is lost: an access raises SIGBUS.
    pub poisoned_pages: u64,
    /// Pages that are never evicted.
    pub pinned_pages: u64,
    /// Pages on the node's paging device.
    pub paged_pages: u64,
    /// Processes that have the segment attached on this node.
    pub attached_clients: u64,
    /// Faults on pages absent from the node's memory.
    pub faults_missing: u64,
    /// Faults on pages in the node's memory but not yet mapped by the process.
    pub faults_minor: u64,
    /// Write faults on write-protected pages.
    pub faults_wp: u64,
    /// Dormant pages given as zero pages.
    pub zero_fills: u64,
    /// Reads from the backing store, and their bytes.
    pub mapper_reads: u64,
    pub mapper_bytes_read: u64,
    /// Bytes written back to the backing store.
    pub mapper_bytes_written: u64,
    /// Pages evicted, paged in and paged out under memory pressure.
    pub evictions: u64,
    pub page_ins: u64,
    pub page_outs: u64,
    /// Pages read ahead of sequential readers.
    pub prefetched: u64,
    /// Pages poisoned so far, and syncs served.
    pub poisonings: u64,
    pub syncs: u64,
    /// Fault service time in the daemon: upper bounds of the 50th and 99th percentiles, in
    /// nanoseconds (0 when there were no faults).
    pub fault_service_p50_ns: u64,
    pub fault_service_p99_ns: u64,
    /// What backs the segment: a `pagemesh_backing`.
    pub backing: pagemesh_backing,
}

impl From<&SegmentStat> for pagemesh_segment_stat {
    fn from(s: &SegmentStat) -> pagemesh_segment_stat {
        let c = &s.counters;
        pagemesh_segment_stat {
            id: s.info.id,
            size_bytes: s.info.size_bytes,
            home_node: s.info.home.map_or(-1, i64::from),
            resident_pages: s.resident_pages,
            dirty_pages: s.dirty_pages,
            poisoned_pages: s.poisoned_pages,
            pinned_pages: s.pinned_pages,
            paged_pages: s.paged_pages,
            attached_clients: s.attached_clients,
            faults_missing: c.faults_missing,
            faults_minor: c.faults_minor,
            faults_wp: c.faults_wp,
            zero_fills: c.zero_fills,
            mapper_reads: c.mapper_reads,
            mapper_bytes_read: c.mapper_bytes_read,
            mapper_bytes_written: c.mapper_bytes_written,
            evictions: c.evictions,
            page_ins: c.page_ins,
            page_outs: c.page_outs,
            prefetched: c.prefetched,
            poisonings: c.poisonings,
            syncs: c.syncs,
            fault_service_p50_ns: c.fault_service_p50_ns,
            fault_service_p99_ns: c.fault_service_p99_ns,
            backing: match s.info.backing {
                Backing::Zero => pagemesh_backing::PAGEMESH_BACKING_ZERO,
                Backing::File { .. } => pagemesh_backing::PAGEMESH_BACKING_FILE,
                Backing::Volume { .. } => pagemesh_backing::PAGEMESH_BACKING_VOLUME,
            },
        }
    }
}

/// The client behind a handle.
///
/// # Safety
///
/// `client` is NULL or a handle from `pagemesh_connect` not yet disconnected.
unsafe fn client_of<'a>(client: *const pagemesh_client) -> Result<&'a Client, Failure> {
    // SAFETY: the caller's contract.
    unsafe { args::handle(client, "client") }.map(pagemesh_client::client)
}

/// Connect to the daemon at `socket_path`, or, if `socket_path` is NULL, at
/// `$PAGEMESH_SOCKET`, or at `/run/pagemesh/pagemesh.sock`. On success `*out` is a new client
/// that the caller owns and frees with `pagemesh_disconnect`; on failure `*out` is NULL.
///
/// # Safety
///
/// `socket_path` is NULL or a NUL-terminated string; `out` is NULL or valid for writing a
/// pointer. The library keeps neither pointer.
#[no_mangle]
pub unsafe extern "C" fn pagemesh_connect(
    socket_path: *const c_char,
    out: *mut *mut pagemesh_client,
) -> pagemesh_status {
    guard::status(|| {
        args::not_null(out, "out")?;
        // SAFETY: `out` is non-NULL (checked) and valid for writing (the caller's contract).
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: the caller's contract on `socket_path`.
        let path = unsafe { args::optional_text(socket_path, "socket_path") }?;
        let client = match path {
            Some(p) => Client::connect(p)?,
            None => Client::connect_default()?,
        };
        let handle = Box::into_raw(Box::new(pagemesh_client { client }));
        // SAFETY: as above.
        unsafe { out.write(handle) };
        Ok(())
    })
}

/// Free a client; `client` is invalid afterwards. Mappings attached through it stay attached.
/// Its connection to the daemon closes, releasing the locks it holds, once no mapping attached
/// through it remains (a mapping keeps the client's connection for as long as it lives).
///
/// # Safety
///
/// `client` is NULL or a handle from `pagemesh_connect` not yet disconnected, which no other
/// thread is using.
#[no_mangle]
pub unsafe extern "C" fn pagemesh_disconnect(client: *mut pagemesh_client) -> pagemesh_status {
    guard::status(|| {
        args::not_null(client, "client")?;
        // SAFETY: `client` came from Box::into_raw in pagemesh_connect and is freed once (the
        // caller's contract).
        drop(unsafe { Box::from_raw(client) });
        Ok(())
    })
}

/// Create segment `name` of `size_bytes` bytes. `backing_file` NULL: anonymous memory whose
/// pages read as zero until written (`size_bytes` at least 1); otherwise the path of a file the
/// daemon pages the segment from and writes back to on sync (`size_bytes` 0: the file's size).
/// A relative path is taken from this process's working directory.
///
/// # Safety
///
/// `client` is NULL or a live client; `name` and `backing_file` are NULL or NUL-terminated
/// strings. The library keeps none of the pointers.
#[no_mangle]
pub unsafe extern "C" fn pagemesh_create(
    client: *const pagemesh_client,
    name: *const c_char,
    size_bytes: u64,
    backing_file: *const c_char,
) -> pagemesh_status {
    guard::status(|| {
        // SAFETY: the caller's contract on every pointer.
        let (client, name, file) = unsafe {
            (
                client_of(client)?,
                args::text(name, "name")?,
                args::optional_text(backing_file, "backing_file")?,
            )
        };
        let backing = match file {
            None if size_bytes == 0 => {
                return Err(Failure::new(
                    pagemesh_status::PAGEMESH_ERR_INVALID,
                    format!("segment {name}: a segment without a backing file needs a size of at least one byte"),
                ))
            }
            None => Backing::Zero,
            Some(f) => Backing::File {
                path: absolute(f)?,
            },
        };
        let size = (size_bytes > 0).then_some(size_bytes);
        client.create_segment(name, size, backing)?;
        Ok(())
    })
}

/// `path` made absolute against this process's working directory (the daemon has its own).
fn absolute(path: &str) -> Result<String, Failure> {
    let abs = std::path::absolute(Path::new(path)).map_err(|e| {
        Failure::new(
            pagemesh_status::PAGEMESH_ERR_INVALID,
            format!("backing file {path:?}: {e}"),
        )
    })?;
    abs.into_os_string().into_string().map_err(|p| {
        Failure::new(
            pagemesh_status::PAGEMESH_ERR_INVALID,
            format!("backing file {p:?} is not UTF-8"),
        )
    })
}

/// Remove segment `name` from the catalog. A file segment's dirty pages are written back first
/// and its file stays. Fails while a process has the segment attached.
///
/// # Safety
///
/// `client` is NULL or a live client; `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn pagemesh_remove(
    client: *const pagemesh_client,
    name: *const c_char,
) -> pagemesh_status {
    guard::status(|| {
        // SAFETY: the caller's contract on every pointer.
        let (client, name) = unsafe { (client_of(client)?, args::text(name, "name")?) };
        client.remove_segment(name)?;
        Ok(())
    })
}

/// Fill `*out` with segment `name`'s figures on this node.
///
/// # Safety
///
/// `client` is NULL or a live client; `name` is NULL or a NUL-terminated string; `out` is NULL
/// or valid for writing a `pagemesh_segment_stat` (the caller's memory; the library keeps no
/// pointer to it).
#[no_mangle]
pub unsafe extern "C" fn pagemesh_stat(
    client: *const pagemesh_client,
    name: *const c_char,
    out: *mut pagemesh_segment_stat,
) -> pagemesh_status {
    guard::status(|| {
        // SAFETY: the caller's contract on every pointer.
        let (client, name) = unsafe { (client_of(client)?, args::text(name, "name")?) };
        args::not_null(out, "out")?;
        let stat = client.stat(name)?;
        // SAFETY: `out` is non-NULL (checked) and valid for writing (the caller's contract).
        unsafe { out.write(pagemesh_segment_stat::from(&stat)) };
        Ok(())
    })
}

/// Write a file segment's dirty pages to its file and fsync: they are durable when this
/// returns `PAGEMESH_OK`. `*pages_written` (if `pages_written` is not NULL) is how many pages
/// were written. A segment without a file writes nothing.
///
/// # Safety
///
/// `client` is NULL or a live client; `name` is NULL or a NUL-terminated string;
/// `pages_written` is NULL or valid for writing a `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn pagemesh_sync(
    client: *const pagemesh_client,
    name: *const c_char,
    pages_written: *mut u64,
) -> pagemesh_status {
    guard::status(|| {
        // SAFETY: the caller's contract on every pointer.
        let (client, name) = unsafe { (client_of(client)?, args::text(name, "name")?) };
        let pages = client.sync(name)?;
        // SAFETY: the caller's contract on `pages_written`.
        unsafe { args::store_optional(pages_written, pages) };
        Ok(())
    })
}

/// Fault in and pin `[offset, offset + len)` of segment `name`: those pages are never evicted
/// until unpinned. `*pages` (if `pages` is not NULL) is how many pages were newly pinned.
/// Node-local segments only (a cluster segment refuses with `PAGEMESH_ERR_INVALID`); a range
/// outside the segment is `PAGEMESH_ERR_INVALID` (the daemon checks it).
///
/// # Safety
///
/// `client` is NULL or a live client; `name` is NULL or a NUL-terminated string; `pages` is
/// NULL or valid for writing a `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn pagemesh_pin(
    client: *const pagemesh_client,
    name: *const c_char,
    offset: u64,
    len: u64,
    pages: *mut u64,
) -> pagemesh_status {
    guard::status(|| {
        // SAFETY: the caller's contract on every pointer.
        let (client, name) = unsafe { (client_of(client)?, args::text(name, "name")?) };
        let n = client.pin(name, offset, len)?;
        // SAFETY: the caller's contract on `pages`.
        unsafe { args::store_optional(pages, n) };
        Ok(())
    })
}

/// Unpin `[offset, offset + len)` of segment `name`. `*pages` (if `pages` is not NULL) is how
/// many pages were unpinned.
///
/// # Safety
///
/// As for `pagemesh_pin`.
#[no_mangle]
pub unsafe extern "C" fn pagemesh_unpin(
    client: *const pagemesh_client,
    name: *const c_char,
    offset: u64,
    len: u64,
    pages: *mut u64,
) -> pagemesh_status {
    guard::status(|| {
        // SAFETY: the caller's contract on every pointer.
        let (client, name) = unsafe { (client_of(client)?, args::text(name, "name")?) };
        let n = client.unpin(name, offset, len)?;
        // SAFETY: the caller's contract on `pages`.
        unsafe { args::store_optional(pages, n) };
        Ok(())
    })
}

/// Read `len` bytes at `offset` of segment `name` into `buf`, through the node's page cache
/// without attaching it (segment I/O: coherent with every mapping of the segment). A range
/// outside the segment is `PAGEMESH_ERR_INVALID` (the daemon checks it).
///
/// # Safety
///
/// `client` is NULL or a live client; `name` is NULL or a NUL-terminated string; `buf` is NULL
/// or `len` writable bytes of the caller's (the library keeps no pointer to them).
#[no_mangle]
pub unsafe extern "C" fn pagemesh_segment_read(
    client: *const pagemesh_client,
    name: *const c_char,
    offset: u64,
    buf: *mut c_void,
    len: usize,
) -> pagemesh_status {
    guard::status(|| {
        // SAFETY: the caller's contract on every pointer.
        let (client, name, buf) = unsafe {
            (
                client_of(client)?,
                args::text(name, "name")?,
                args::bytes_mut(buf, len, "buf")?,
            )
        };
        client.read_at(name, offset, buf)?;
        Ok(())
    })
}

/// Write the `len` bytes at `data` at `offset` of segment `name`, through the node's page
/// cache without attaching it. A range outside the segment is `PAGEMESH_ERR_INVALID`.
///
/// # Safety
///
/// `client` is NULL or a live client; `name` is NULL or a NUL-terminated string; `data` is
/// NULL or `len` readable bytes of the caller's (the library keeps no pointer to them).
#[no_mangle]
pub unsafe extern "C" fn pagemesh_segment_write(
    client: *const pagemesh_client,
    name: *const c_char,
    offset: u64,
    data: *const c_void,
    len: usize,
) -> pagemesh_status {
    guard::status(|| {
        // SAFETY: the caller's contract on every pointer.
        let (client, name, data) = unsafe {
            (
                client_of(client)?,
                args::text(name, "name")?,
                args::bytes(data, len, "data")?,
            )
        };
        client.write_at(name, offset, data)?;
        Ok(())
    })
}

/// Wait at barrier number `barrier` of cluster segment `segment` until `parties` processes (on
/// any nodes) arrived, for at most `timeout_ms` milliseconds (at most one day). Served by the
/// segment's home node; a daemon outside any cluster refuses with `PAGEMESH_ERR_INVALID`.
/// `*round` (if `round` is not NULL) is the barrier's round, from 1.
///
/// # Safety
///
/// `client` is NULL or a live client; `segment` is NULL or a NUL-terminated string; `round` is
/// NULL or valid for writing a `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn pagemesh_barrier(
    client: *const pagemesh_client,
    segment: *const c_char,
    barrier: u32,
    parties: u32,
    timeout_ms: u64,
    round: *mut u64,
) -> pagemesh_status {
    guard::status(|| {
        // SAFETY: the caller's contract on every pointer.
        let (client, segment) = unsafe { (client_of(client)?, args::text(segment, "segment")?) };
        let timeout = args::timeout(timeout_ms)?;
        let r = client.barrier_wait(segment, barrier, parties, timeout)?;
        // SAFETY: the caller's contract on `round`.
        unsafe { args::store_optional(round, r) };
        Ok(())
    })
}

/// Take lock number `lock` of cluster segment `segment` (FIFO, served by its home node),
/// waiting at most `timeout_ms` milliseconds (at most one day). It is held until
/// `pagemesh_unlock` or until the client is disconnected.
///
/// # Safety
///
/// `client` is NULL or a live client; `segment` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn pagemesh_lock(
    client: *const pagemesh_client,
    segment: *const c_char,
    lock: u32,
    timeout_ms: u64,
) -> pagemesh_status {
    guard::status(|| {
        // SAFETY: the caller's contract on every pointer.
        let (client, segment) = unsafe { (client_of(client)?, args::text(segment, "segment")?) };
        let timeout = args::timeout(timeout_ms)?;
        client.lock(segment, lock, timeout)?;
        Ok(())
    })
}

/// Release lock number `lock` of cluster segment `segment`, taken by `pagemesh_lock` on this
/// client.
///
/// # Safety
///
/// `client` is NULL or a live client; `segment` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn pagemesh_unlock(
    client: *const pagemesh_client,
    segment: *const c_char,
    lock: u32,
) -> pagemesh_status {
    guard::status(|| {
        // SAFETY: the caller's contract on every pointer.
        let (client, segment) = unsafe { (client_of(client)?, args::text(segment, "segment")?) };
        client.unlock(segment, lock)?;
        Ok(())
    })
}
