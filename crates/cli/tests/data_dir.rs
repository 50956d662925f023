//! Data dirs of earlier releases: a dir written by pagemesh 3291357 (format 1, no stamp) is
//! migrated and its data read back; a dir of a format this pagemesh cannot read is refused
//! with a message naming both versions.

mod common;

use std::net::TcpListener;
use std::path::Path;

use common::Daemon;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/datadir-3291357"
);

fn copy_fixture(to: &Path) {
    std::fs::create_dir_all(to.join("cluster")).expect("data dir");
    std::fs::copy(
        Path::new(FIXTURE).join("catalog.json"),
        to.join("catalog.json"),
    )
    .expect("copy the catalog");
    for e in std::fs::read_dir(Path::new(FIXTURE).join("cluster")).expect("fixture") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join("cluster").join(e.file_name())).expect("copy");
    }
}

/// The fixture's one-node cluster, on a free loopback port.
fn node1_flags() -> Vec<String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    vec![
        "--node-id".into(),
        "1".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
    ]
}

#[test]
fn a_data_dir_of_3291357_is_migrated_and_its_data_kept() {
    let mut d = Daemon::unstarted();
    copy_fixture(&d.data_dir);
    let flags = node1_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    d.spawn_with(&flags);
    let list = d.run(&["segment", "list"]).ok().stdout_str();
    assert!(list.contains("kept"), "{list}");
    // The pattern written and synced by 3291357 reads back through real faults.
    d.run(&["memtest", "kept", "--verify", "7"]).ok();
    let stamp = std::fs::read_to_string(d.data_dir.join("FORMAT")).expect("stamped");
    assert_eq!(stamp, "pagemesh data dir format 2\n");
    assert!(
        d.log().contains("migrated from format 1 to format 2"),
        "{}",
        d.log()
    );
    // Its catalog had no owners: the segment is root's, mode 0600, and the log says so.
    assert!(
        d.log().contains("migrated from version 1 to 2"),
        "{}",
        d.log()
    );
    let json = d.run(&["segment", "list", "--json"]).ok();
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(
        (&json[0]["uid"], &json[0]["mode"]),
        (&0.into(), &"0600".into())
    );
    // The epoch went on from the old incarnation's.
    let epoch = std::fs::read_to_string(d.data_dir.join("cluster/epoch")).expect("epoch");
    assert_eq!(epoch.trim(), "2");
    // Restarted, it is of the current format: no second migration.
    d.kill9();
    d.spawn_with(&flags);
    d.run(&["memtest", "kept", "--verify", "7"]).ok();
    assert_eq!(d.log().matches("migrated from format").count(), 1);
}

#[test]
fn a_data_dir_of_a_newer_format_is_refused_naming_both_versions() {
    let d = Daemon::unstarted();
    copy_fixture(&d.data_dir);
    std::fs::write(d.data_dir.join("FORMAT"), "pagemesh data dir format 3\n").expect("stamp");
    let out = d.refused_start(&[]);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("is format 3") && out.stderr.contains("formats 1 to 2"),
        "{}",
        out.stderr
    );
    // Nothing in it was touched.
    let catalog = std::fs::read(d.data_dir.join("catalog.json")).expect("catalog");
    assert_eq!(
        catalog,
        std::fs::read(Path::new(FIXTURE).join("catalog.json")).expect("fixture")
    );
}

#[test]
fn a_catalog_of_another_version_is_refused_naming_both() {
    let d = Daemon::unstarted();
    std::fs::create_dir_all(&d.data_dir).expect("data dir");
    std::fs::write(
        d.data_dir.join("catalog.json"),
        r#"{"version": 7, "next_id": 1, "segments": []}"#,
    )
    .expect("catalog");
    let out = d.refused_start(&[]);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("version 7") && out.stderr.contains("reads version 2"),
        "{}",
        out.stderr
    );
}
