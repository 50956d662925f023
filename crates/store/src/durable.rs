//! Replacing a small file durably: the one recipe every on-disk record of pagemesh uses (the
//! catalog, the data dir's format stamp, the cluster's epoch and fences, compacted intent
//! logs).

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Replace `path` with `bytes` atomically and durably: write `<name>.tmp` beside it, fsync it,
/// rename it over `path`, fsync the directory. A crash at any point leaves either the old file
/// or the new one, never a mix.
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_holds_the_new_bytes_and_no_temp_file_is_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("catalog.json");
        replace_file(&p, b"one").expect("first");
        replace_file(&p, b"two").expect("second");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("catalog.json")]);
    }
}
