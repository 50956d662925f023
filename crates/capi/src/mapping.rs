//! A segment attached to this process: attach, detach, its memory, and copies in and out.

use std::ffi::{c_char, c_void};

use pagemesh::Mapping;
use pagemesh_types::PAGE_SIZE;

use crate::args;
use crate::client::pagemesh_client;
use crate::guard;
use crate::status::{pagemesh_status, Failure};

/// A segment mapped into this process (opaque). Made by `pagemesh_attach`, unmapped and freed
/// by `pagemesh_detach`. May be used from several threads at once.
pub struct pagemesh_mapping {
    mapping: Mapping,
}

/// The mapping behind a handle.
///
/// # Safety
///
/// `m` is NULL or a handle from `pagemesh_attach` not yet detached.
unsafe fn mapping_of<'a>(m: *const pagemesh_mapping) -> Result<&'a Mapping, Failure> {
    // SAFETY: the caller's contract.
    unsafe { args::handle(m, "mapping") }.map(|h| &h.mapping)
}

/// Refuse a caller's buffer that overlaps the mapping itself (a copy between the two would
/// overlap; copy within the segment with `memmove` on `pagemesh_base`).
fn not_overlapping(m: &Mapping, buf: *const u8, len: usize, what: &str) -> Result<(), Failure> {
    let base = m.as_ptr() as usize;
    let end = base + (m.len() as u64).div_ceil(PAGE_SIZE) as usize * PAGE_SIZE as usize;
    let (b, b_end) = (buf as usize, (buf as usize).saturating_add(len));
    if b < end && base < b_end {
        return Err(Failure::new(
            pagemesh_status::PAGEMESH_ERR_INVALID,
            format!(
                "segment {}: {what} overlaps the segment's own mapping; copy within a segment with memmove on pagemesh_base()",
                m.info().name
            ),
        ));
    }
    Ok(())
}

/// Map segment `name` into this process. Every access to the memory is served by the daemon;
/// if the daemon goes away, every later access to a page not yet in this process raises SIGBUS
/// (never silent zeros, never a hang). On success `*out` is a new mapping that the caller owns
/// and frees with `pagemesh_detach`; it does not depend on `client` (which may be disconnected
/// first). On failure `*out` is NULL.
///
/// # Safety
///
/// `client` is NULL or a live client; `name` is NULL or a NUL-terminated string; `out` is NULL
/// or valid for writing a pointer. The library keeps none of the pointers.
#[no_mangle]
pub unsafe extern "C" fn pagemesh_attach(
    client: *const pagemesh_client,
    name: *const c_char,
    out: *mut *mut pagemesh_mapping,
) -> pagemesh_status {
    guard::status(|| {
        args::not_null(out, "out")?;
        // SAFETY: `out` is non-NULL (checked) and valid for writing (the caller's contract).
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: the caller's contract on every pointer.
        let (client, name) = unsafe {
            (
                args::handle(client, "client")?.client(),
                args::text(name, "name")?,
            )
        };
        let mapping = client.attach(name)?;
        let handle = Box::into_raw(Box::new(pagemesh_mapping { mapping }));
        // SAFETY: as above.
        unsafe { out.write(handle) };
        Ok(())
    })
}

/// Unmap the segment and free the mapping. The memory at `pagemesh_base` is gone afterwards:
/// any pointer into it is invalid. Dirty pages stay in the node's page cache (use
/// `pagemesh_sync` to make a file segment's durable).
///
/// # Safety
///
/// `mapping` is NULL or a handle from `pagemesh_attach` not yet detached, which no other
/// thread is using.
#[no_mangle]
pub unsafe extern "C" fn pagemesh_detach(mapping: *mut pagemesh_mapping) -> pagemesh_status {
    guard::status(|| {
        args::not_null(mapping, "mapping")?;
        // SAFETY: `mapping` came from Box::into_raw in pagemesh_attach and is freed once (the
        // caller's contract).
        drop(unsafe { Box::from_raw(mapping) });
        Ok(())
    })
}

/// The segment's size in bytes; 0 if `mapping` is NULL (a segment has at least one byte).
///
/// # Safety
///
/// `mapping` is NULL or a live mapping.
#[no_mangle]
pub unsafe extern "C" fn pagemesh_length(mapping: *const pagemesh_mapping) -> u64 {
    guard::call(
        |_| 0,
        // SAFETY: the caller's contract on `mapping`.
        || unsafe { mapping_of(mapping) }.map(|m| m.info().size_bytes),
    )
}

/// The start of the segment's memory in this process, valid until `pagemesh_detach`: plain
/// memory for loads, stores and atomics, shared with every process that attached the segment
/// (on a volume segment, writes stay in this process). The mapping is whole pages: the bytes
/// past `pagemesh_length` up to the page's end are addressable but not part of the segment.
/// NULL if `mapping` is NULL.
///
/// # Safety
///
/// `mapping` is NULL or a live mapping.
#[no_mangle]
pub unsafe extern "C" fn pagemesh_base(mapping: *const pagemesh_mapping) -> *mut c_void {
    guard::call(
        |_| std::ptr::null_mut(),
        // SAFETY: the caller's contract on `mapping`.
        || unsafe { mapping_of(mapping) }.map(|m| m.as_ptr().cast::<c_void>()),
    )
}

/// Copy `len` bytes at `offset` of the mapped segment into `buf` (page faults served as for
/// any access). `PAGEMESH_ERR_RANGE` if the range is not inside the segment.
///
/// # Safety
///
/// `mapping` is NULL or a live mapping; `buf` is NULL or `len` writable bytes of the caller's.
/// `buf` may not overlap the mapping (refused with `PAGEMESH_ERR_INVALID`).
#[no_mangle]
pub unsafe extern "C" fn pagemesh_read_at(
    mapping: *const pagemesh_mapping,
    offset: u64,
    buf: *mut c_void,
    len: usize,
) -> pagemesh_status {
    guard::status(|| {
        // SAFETY: the caller's contract on `mapping`.
        let m = unsafe { mapping_of(mapping) }?;
        args::not_null(buf, "buf")?;
        not_overlapping(m, buf.cast::<u8>(), len, "buf")?;
        // SAFETY: the caller's contract on `buf`; it does not overlap the mapping (checked),
        // so the slice aliases nothing the copy reads.
        let buf = unsafe { args::bytes_mut(buf, len, "buf") }?;
        m.read_at(offset, buf)?;
        Ok(())
    })
}

/// Copy the `len` bytes at `data` into the mapped segment at `offset`. `PAGEMESH_ERR_RANGE` if
/// the range is not inside the segment.
///
/// # Safety
///
/// `mapping` is NULL or a live mapping; `data` is NULL or `len` readable bytes of the caller's.
/// `data` may not overlap the mapping (refused with `PAGEMESH_ERR_INVALID`).
#[no_mangle]
pub unsafe extern "C" fn pagemesh_write_at(
    mapping: *const pagemesh_mapping,
    offset: u64,
    data: *const c_void,
    len: usize,
) -> pagemesh_status {
    guard::status(|| {
        // SAFETY: the caller's contract on `mapping`.
        let m = unsafe { mapping_of(mapping) }?;
        args::not_null(data.cast_mut(), "data")?;
        not_overlapping(m, data.cast::<u8>(), len, "data")?;
        // SAFETY: the caller's contract on `data`; it does not overlap the mapping (checked).
        let data = unsafe { args::bytes(data, len, "data") }?;
        m.write_at(offset, data)?;
        Ok(())
    })
}
