//! One conformance suite, run against every mapper.

use pagemesh_store::{
    FaultyMapper, FileMapper, Mapper, MapperError, PageData, ZeroMapper, PAGE_SIZE,
};

/// What every persistent mapper must do: unwritten pages read as zero (or dormant), written
/// pages read back, and data survives a reopen after sync.
fn persistent_roundtrip(m: &dyn Mapper, reopen: &dyn Fn() -> Box<dyn Mapper>) {
    let mut buf = vec![0xAAu8; PAGE_SIZE];
    match m.read_page(0, &mut buf).unwrap() {
        PageData::Dormant => {}
        PageData::Filled => assert!(buf.iter().all(|&b| b == 0), "fresh page not zero"),
    }
    let page: Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 7) as u8).collect();
    m.write_at(PAGE_SIZE as u64, &page).unwrap();
    m.sync().unwrap();
    let again = reopen();
    let mut out = vec![0u8; PAGE_SIZE];
    assert_eq!(
        again.read_page(PAGE_SIZE as u64, &mut out).unwrap(),
        PageData::Filled
    );
    assert_eq!(out, page);
}

#[test]
fn zero_mapper_is_dormant_and_refuses_writes() {
    let m = ZeroMapper;
    let mut buf = vec![1u8; PAGE_SIZE];
    assert_eq!(
        m.read_page(123 * PAGE_SIZE as u64, &mut buf).unwrap(),
        PageData::Dormant
    );
    assert!(matches!(m.write_at(0, &buf), Err(MapperError::ReadOnly)));
    assert!(!m.is_persistent());
}

#[test]
fn file_mapper_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let m = FileMapper::open(&path, Some(4 * PAGE_SIZE as u64)).unwrap();
    persistent_roundtrip(&m, &|| Box::new(FileMapper::open(&path, None).unwrap()));
}

#[test]
fn file_mapper_short_read_when_file_shrinks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let m = FileMapper::open(&path, Some(4 * PAGE_SIZE as u64)).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(PAGE_SIZE as u64)
        .unwrap();
    let mut buf = vec![0u8; PAGE_SIZE];
    let err = m.read_page(2 * PAGE_SIZE as u64, &mut buf).unwrap_err();
    assert!(
        matches!(err, MapperError::ShortRead { file_len, .. } if file_len == PAGE_SIZE as u64),
        "{err}"
    );
    assert!(err.to_string().contains("shrank"));
}

#[test]
fn faulty_mapper_conforms_and_injects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let m = FaultyMapper::new(FileMapper::open(&path, Some(4 * PAGE_SIZE as u64)).unwrap());
    persistent_roundtrip(&m, &|| {
        Box::new(FaultyMapper::new(FileMapper::open(&path, None).unwrap()))
    });
    m.fail_reads_at(3 * PAGE_SIZE as u64);
    let mut buf = vec![0u8; PAGE_SIZE];
    let err = m.read_page(3 * PAGE_SIZE as u64, &mut buf).unwrap_err();
    assert!(err.to_string().contains("Input/output error"), "{err}");
    m.read_page(2 * PAGE_SIZE as u64, &mut buf).unwrap();
    m.fail_next_writes(1);
    assert!(m.write_at(0, &buf).is_err());
    m.write_at(0, &buf).unwrap();
}

#[test]
fn file_mapper_partial_last_page_reads_zero_tail_and_never_grows_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, vec![7u8; PAGE_SIZE + 100]).unwrap();
    let m = FileMapper::open(&path, None).unwrap();
    let mut buf = vec![1u8; PAGE_SIZE];
    m.read_page(PAGE_SIZE as u64, &mut buf).unwrap();
    assert!(buf[..100].iter().all(|&b| b == 7) && buf[100..].iter().all(|&b| b == 0));
    m.write_at(PAGE_SIZE as u64, &vec![9u8; PAGE_SIZE]).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        PAGE_SIZE as u64 + 100
    );
}

#[test]
fn read_pages_matches_page_by_page_for_every_mapper() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let data: Vec<u8> = (0..3 * PAGE_SIZE + 100).map(|i| (i % 253) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let mappers: Vec<Box<dyn Mapper>> = vec![
        Box::new(FileMapper::open(&path, None).unwrap()),
        Box::new(FaultyMapper::new(FileMapper::open(&path, None).unwrap())),
        Box::new(ZeroMapper),
    ];
    for m in mappers {
        let mut run = vec![0xEEu8; 4 * PAGE_SIZE];
        m.read_pages(0, &mut run).unwrap();
        for i in 0..4 {
            let mut one = vec![0u8; PAGE_SIZE];
            if m.read_page((i * PAGE_SIZE) as u64, &mut one).unwrap() == PageData::Dormant {
                one.fill(0);
            }
            assert_eq!(
                &run[i * PAGE_SIZE..(i + 1) * PAGE_SIZE],
                &one[..],
                "{} page {i}",
                m.describe()
            );
        }
    }
}
