//! Kernel ABI: structs and most ioctl numbers come from `linux-raw-sys` (6.17 UAPI); the few that
//! it lacks are defined here and checked at compile time against the `_IOC` encoding of the
//! struct they carry, so a wrong hand-copied number cannot build.

use core::mem::size_of;

pub use linux_raw_sys::general::{
    page_region, pm_scan_arg, PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING,
};
pub use linux_raw_sys::general::{
    uffd_msg, uffdio_api, uffdio_continue, uffdio_copy, uffdio_poison, uffdio_range,
    uffdio_register, uffdio_writeprotect, uffdio_zeropage, UFFD_API, UFFD_EVENT_PAGEFAULT,
    UFFD_EVENT_REMAP, UFFD_EVENT_REMOVE, UFFD_EVENT_UNMAP, UFFD_PAGEFAULT_FLAG_MINOR,
    UFFD_PAGEFAULT_FLAG_WP, UFFD_PAGEFAULT_FLAG_WRITE, UFFD_USER_MODE_ONLY,
};
pub use linux_raw_sys::ioctl::{
    UFFDIO_API, UFFDIO_CONTINUE, UFFDIO_COPY, UFFDIO_REGISTER, UFFDIO_UNREGISTER, UFFDIO_WAKE,
    UFFDIO_WRITEPROTECT, UFFDIO_ZEROPAGE,
};

const IOC_NONE: u32 = 0;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// The kernel's `_IOC(dir, type, nr, size)` on x86_64.
const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (ty << 8) | nr
}

const UFFDIO_TYPE: u32 = linux_raw_sys::general::UFFDIO;

/// `UFFDIO_POISON`: `_IOWR(0xAA, 8, struct uffdio_poison)`.
pub const UFFDIO_POISON: u32 = 0xc020_aa08;
const _: () = assert!(
    UFFDIO_POISON
        == ioc(
            IOC_READ | IOC_WRITE,
            UFFDIO_TYPE,
            linux_raw_sys::general::_UFFDIO_POISON,
            size_of::<uffdio_poison>()
        )
);

/// `UFFDIO_MOVE`: `_IOWR(0xAA, 5, struct uffdio_move)`. Kept for completeness; COPY is faster on
/// the fault path (UFFD-NOTES.md).
pub const UFFDIO_MOVE: u32 = 0xc028_aa05;
const _: () = assert!(
    UFFDIO_MOVE
        == ioc(
            IOC_READ | IOC_WRITE,
            UFFDIO_TYPE,
            linux_raw_sys::general::_UFFDIO_MOVE,
            size_of::<linux_raw_sys::general::uffdio_move>()
        )
);

/// `PAGEMAP_SCAN` on `/proc/<pid>/pagemap`: `_IOWR('f', 16, struct pm_scan_arg)`.
pub const PAGEMAP_SCAN: u32 = 0xc060_6610;
const _: () = assert!(
    PAGEMAP_SCAN
        == ioc(
            IOC_READ | IOC_WRITE,
            b'f' as u32,
            16,
            size_of::<pm_scan_arg>()
        )
);
// The layouts of include/uapi/linux/fs.h (6.7+): twelve u64s in, three u64s per region out.
const _: () = assert!(size_of::<pm_scan_arg>() == 96);
const _: () = assert!(size_of::<page_region>() == 24);

/// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd`: `_IO(0xAA, 0)`.
pub const USERFAULTFD_IOC_NEW: u32 = 0xaa00;
const _: () =
    assert!(USERFAULTFD_IOC_NEW == ioc(IOC_NONE, linux_raw_sys::general::USERFAULTFD_IOC, 0, 0));

// The numbers linux-raw-sys does give must agree with the same encoding (a guard against a
// bindings version that differs from the structs we pass).
const _: () = assert!(
    UFFDIO_COPY
        == ioc(
            IOC_READ | IOC_WRITE,
            UFFDIO_TYPE,
            linux_raw_sys::general::_UFFDIO_COPY,
            size_of::<uffdio_copy>()
        )
);
const _: () = assert!(
    UFFDIO_CONTINUE
        == ioc(
            IOC_READ | IOC_WRITE,
            UFFDIO_TYPE,
            linux_raw_sys::general::_UFFDIO_CONTINUE,
            size_of::<uffdio_continue>()
        )
);
const _: () = assert!(
    UFFDIO_WRITEPROTECT
        == ioc(
            IOC_READ | IOC_WRITE,
            UFFDIO_TYPE,
            linux_raw_sys::general::_UFFDIO_WRITEPROTECT,
            size_of::<uffdio_writeprotect>()
        )
);
const _: () = assert!(
    UFFDIO_WAKE
        == ioc(
            IOC_READ,
            UFFDIO_TYPE,
            linux_raw_sys::general::_UFFDIO_WAKE,
            size_of::<uffdio_range>()
        )
);
const _: () = assert!(
    UFFDIO_API
        == ioc(
            IOC_READ | IOC_WRITE,
            UFFDIO_TYPE,
            linux_raw_sys::general::_UFFDIO_API,
            size_of::<uffdio_api>()
        )
);
const _: () = assert!(
    UFFDIO_REGISTER
        == ioc(
            IOC_READ | IOC_WRITE,
            UFFDIO_TYPE,
            linux_raw_sys::general::_UFFDIO_REGISTER,
            size_of::<uffdio_register>()
        )
);
const _: () = assert!(
    UFFDIO_UNREGISTER
        == ioc(
            IOC_READ,
            UFFDIO_TYPE,
            linux_raw_sys::general::_UFFDIO_UNREGISTER,
            size_of::<uffdio_range>()
        )
);
const _: () = assert!(
    UFFDIO_ZEROPAGE
        == ioc(
            IOC_READ | IOC_WRITE,
            UFFDIO_TYPE,
            linux_raw_sys::general::_UFFDIO_ZEROPAGE,
            size_of::<uffdio_zeropage>()
        )
);
const _: () = assert!(size_of::<uffd_msg>() == 32);

/// Mode bits missing from the bindings (include/uapi/linux/userfaultfd.h).
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;
pub const UFFDIO_WRITEPROTECT_MODE_DONTWAKE: u64 = 2;
pub const UFFDIO_COPY_MODE_DONTWAKE: u64 = linux_raw_sys::general::UFFDIO_COPY_MODE_DONTWAKE as u64;
pub const UFFDIO_COPY_MODE_WP: u64 = linux_raw_sys::general::UFFDIO_COPY_MODE_WP as u64;
pub const UFFDIO_ZEROPAGE_MODE_DONTWAKE: u64 =
    linux_raw_sys::general::UFFDIO_ZEROPAGE_MODE_DONTWAKE as u64;
pub const UFFDIO_CONTINUE_MODE_DONTWAKE: u64 = 1;
pub const UFFDIO_CONTINUE_MODE_WP: u64 = 2;
pub const UFFDIO_POISON_MODE_DONTWAKE: u64 = 1;

pub const UFFDIO_REGISTER_MODE_MISSING: u64 =
    linux_raw_sys::general::UFFDIO_REGISTER_MODE_MISSING as u64;
pub const UFFDIO_REGISTER_MODE_WP: u64 = linux_raw_sys::general::UFFDIO_REGISTER_MODE_WP as u64;
pub const UFFDIO_REGISTER_MODE_MINOR: u64 =
    linux_raw_sys::general::UFFDIO_REGISTER_MODE_MINOR as u64;
