//! Tests of `peer.rs` and its coherence codec `peer_envelope.rs` (kept apart so the modules
//! stay readable).

use pagemesh_core::{CacheState, DenyReason, Msg, PageData, PageKey, ReqId, TxnId, Version, Want};
use pagemesh_types::SegmentId;

use super::*;

fn env(msg: Msg) -> PeerFrame {
    PeerFrame::Protocol(Envelope {
        from: NodeId(1),
        from_epoch: Epoch(3),
        to: NodeId(2),
        to_epoch: Epoch(0),
        msg,
    })
}

fn all_frames() -> Vec<PeerFrame> {
    let page = PageKey::new(SegmentId(7), 42);
    let bytes = PageData::Bytes((0..4096u32).map(|i| (i * 7) as u8).collect());
    vec![
        PeerFrame::Hello {
            version: PEER_PROTOCOL_VERSION,
            cluster_id: 99,
            from: NodeId(1),
            from_epoch: Epoch(5),
            to: NodeId(2),
        },
        PeerFrame::Welcome { epoch: Epoch(8) },
        PeerFrame::Refused {
            reason: "cluster id 3, not 4".into(),
            fenced: true,
        },
        PeerFrame::Heartbeat {
            sent_ms: 5,
            echo_ms: 3,
        },
        env(Msg::Hello),
        env(Msg::Acquire {
            page,
            req: ReqId(9),
            want: Want::Exclusive,
            have: Some((Version(4), TxnId(1 << 33))),
        }),
        env(Msg::Acquire {
            page,
            req: ReqId(9),
            want: Want::Shared,
            have: None,
        }),
        env(Msg::Grant {
            page,
            req: ReqId(9),
            txn: TxnId(10),
            version: Version(11),
            state: CacheState::Modified,
            data: Some(bytes.clone()),
        }),
        env(Msg::Grant {
            page,
            req: ReqId(9),
            txn: TxnId(10),
            version: Version(11),
            state: CacheState::Shared,
            data: Some(PageData::Zero),
        }),
        env(Msg::Grant {
            page,
            req: ReqId(9),
            txn: TxnId(10),
            version: Version(11),
            state: CacheState::ExclusiveClean,
            data: None,
        }),
        env(Msg::GrantAck {
            page,
            txn: TxnId(3),
        }),
        env(Msg::Deny {
            page,
            req: ReqId(2),
            reason: DenyReason::MapperFailed,
        }),
        env(Msg::Fetch {
            page,
            txn: TxnId(3),
            then: CacheState::ExclusiveClean,
        }),
        env(Msg::FetchReply {
            page,
            txn: TxnId(3),
            copy: Some((Version(2), bytes)),
        }),
        env(Msg::FetchReply {
            page,
            txn: TxnId(3),
            copy: None,
        }),
        env(Msg::Inval {
            page,
            txn: TxnId(3),
        }),
        env(Msg::InvalAck {
            page,
            txn: TxnId(3),
        }),
        env(Msg::Evict { page }),
        env(Msg::Recover { seg: SegmentId(7) }),
        env(Msg::Holdings {
            seg: SegmentId(7),
            snapshot: 12,
            part: 2,
            parts: 5,
            copies: vec![
                (1, CacheState::Shared, Version(2), TxnId(3)),
                (9, CacheState::Modified, Version(20), TxnId(30)),
            ],
        }),
        env(Msg::SyncReq {
            seg: SegmentId(7),
            req: ReqId(1),
        }),
        env(Msg::SyncDone {
            seg: SegmentId(7),
            req: ReqId(1),
            failed_pages: 3,
        }),
        env(Msg::ClearPoison {
            page,
            req: ReqId(1),
        }),
        env(Msg::ClearPoisonDone {
            page,
            req: ReqId(1),
        }),
        PeerFrame::Control(Control::BarrierArrive {
            seg: 1,
            barrier: 2,
            parties: 3,
            token: 4,
        }),
        PeerFrame::Control(Control::LockReport {
            held: vec![(1, 2, 3)],
            waiting: vec![(4, 5, 6), (7, 8, 9)],
        }),
        PeerFrame::Control(Control::CreateSegment {
            req: 5,
            name: "grid".into(),
            size_bytes: Some(1 << 20),
            backing: crate::Backing::Zero,
            owner: crate::Owner {
                uid: 1000,
                gid: 100,
                mode: 0o640,
            },
        }),
        PeerFrame::Control(Control::SetOwner {
            req: 6,
            seg: 7,
            change: crate::OwnerChange {
                mode: Some(0o644),
                uid: None,
                gid: Some(100),
            },
            uid: 1000,
            gids: vec![100, 27],
        }),
        PeerFrame::Control(Control::SetOwnerDone {
            req: 6,
            result: Err("no".into()),
        }),
    ]
}

#[test]
fn every_frame_round_trips() {
    for f in all_frames() {
        let mut buf = Vec::new();
        encode_peer_frame(&f, &mut buf);
        let (back, n) = read_peer_frame(&mut &buf[..], &mut Vec::new()).expect("decodes");
        assert_eq!(back, f);
        assert_eq!(n, buf.len());
    }
}

/// The bytes of every frame above, pinned: a change of the wire format must be deliberate (and
/// bump `PEER_PROTOCOL_VERSION`), never a side effect of reworking the codec. After such a
/// change, put the new value here.
#[test]
fn the_wire_bytes_of_every_frame_are_pinned() {
    let mut wire = Vec::new();
    for f in all_frames() {
        encode_peer_frame(&f, &mut wire);
    }
    // FNV-1a, 64 bits.
    let hash = wire.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    assert_eq!((wire.len(), hash), (9957, 0xcc91_45d7_dbaf_2fae));
}

#[test]
fn a_page_message_is_a_fixed_header_plus_the_raw_page() {
    let page = PageKey::new(SegmentId(1), 2);
    let f = env(Msg::Grant {
        page,
        req: ReqId(1),
        txn: TxnId(1),
        version: Version(1),
        state: CacheState::Shared,
        data: Some(PageData::Bytes(vec![0xab; 4096])),
    });
    let mut buf = Vec::new();
    encode_peer_frame(&f, &mut buf);
    assert_eq!(buf.len(), 4 + 1 + PROTOCOL_HEADER_BYTES + 4096);
    assert!(buf[buf.len() - 4096..].iter().all(|&b| b == 0xab));
}

/// Every truncation and every single-byte corruption of every frame either decodes to some
/// frame or is refused with an error: never a panic, never an oversized allocation.
#[test]
fn truncated_or_corrupted_frames_are_refused_without_panicking() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for f in all_frames() {
        let mut buf = Vec::new();
        encode_peer_frame(&f, &mut buf);
        let body = &buf[4..];
        // Every frame but `Refused` (whose reason is the rest of the frame) has a fixed or
        // self-describing length: a truncated one must not decode.
        if !matches!(f, PeerFrame::Refused { .. }) {
            for cut in 0..body.len().min(200) {
                assert!(
                    decode_peer_frame(&body[..cut]).is_err(),
                    "{f:?} cut at {cut}"
                );
            }
        }
        for _ in 0..300 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut b = body.to_vec();
            let i = (seed as usize) % b.len();
            b[i] ^= (seed >> 32) as u8 | 1;
            let _ = decode_peer_frame(&b);
        }
    }
    let huge = (MAX_PEER_FRAME_BYTES + 1).to_le_bytes();
    assert!(matches!(
        read_peer_frame(&mut &huge[..], &mut Vec::new()),
        Err(PeerFrameError::TooLarge { .. })
    ));
}
