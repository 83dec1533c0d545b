//! NBD block status (`base:allocation`) seen by real clients: regions of
//! a fresh array never written are holes that read as zeroes to
//! `nbdinfo --map`, `qemu-img map` and `nbdcopy` (which skips them), the
//! written ones are data; `nbdinfo` lists the context; malformed
//! `NBD_OPT_SET_META_CONTEXT` options get error replies and the server
//! goes on.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use raid_tests::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// A 3-member RAID-5 of sparse 512M members (1 GiB volume; one written
/// region = 64 MiB per member = 128 MiB of the volume) with 1 MiB written
/// at 130M and 4 KiB at 700M.
fn written_raid5(test: &str) -> (tempfile::TempDir, Server) {
    let dir = scratch_dir(test);
    let paths = member_paths(dir.path(), 3);
    create_array(5, "64K", "512M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--control", control.to_str().unwrap()]);
    let server = Server::start(&args);
    qemu_io(
        &server.uri("vol0"),
        &[
            "write -P 0xab 130M 1M".to_string(),
            "write -P 0xcd 700M 4k".to_string(),
        ],
    );
    (dir, server)
}

/// `nbdinfo --map --json`: (offset, length, type) per extent.
fn nbdinfo_map(uri: &str) -> Vec<(u64, u64, u64)> {
    let out = run_ok(Command::new("nbdinfo").args(["--map", "--json", uri]));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let mut map: Vec<(u64, u64, u64)> = Vec::new();
    for e in v.as_array().unwrap() {
        let n = |k: &str| e[k].as_u64().unwrap();
        match map.last_mut() {
            Some(last) if last.2 == n("type") => last.1 += n("length"),
            _ => map.push((n("offset"), n("length"), n("type"))),
        }
    }
    map
}

#[test]
fn nbdinfo_and_qemu_img_see_never_written_regions_as_zero_holes() {
    let (_dir, server) = written_raid5("block-status-map");
    let uri = server.uri("vol0");

    let map = nbdinfo_map(&uri);
    let info: Value =
        serde_json::from_str(&run_ok(Command::new("nbdinfo").args(["--json", &uri]))).unwrap();
    let qemu: Value = serde_json::from_str(&run_ok(Command::new("qemu-img").args([
        "map",
        "--output=json",
        "--image-opts",
        &format!(
            "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={},export=vol0",
            server.addr.port()
        ),
    ])))
    .unwrap();

    // type 3 = hole|zero, 0 = data; the volume is a little under 1 GiB
    // (the members hold metadata too).
    let g = 128 * MIB;
    let size = info["exports"][0]["export-size"].as_u64().unwrap();
    assert_eq!(
        map,
        vec![
            (0, g, 3),
            (g, g, 0),
            (2 * g, 3 * g, 3),
            (5 * g, g, 0),
            (6 * g, size - 6 * g, 3),
        ]
    );
    let contexts = info["exports"][0]["contexts"].to_string();
    assert!(contexts.contains("base:allocation"), "{info}");
    let data: Vec<(u64, u64)> = qemu
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(data, vec![(g, g), (5 * g, g)], "{qemu}");
    let zero_holes = qemu
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["zero"] == true)
        .count();
    assert_eq!(zero_holes, 3, "{qemu}");
}

#[test]
fn nbdcopy_skips_the_holes_and_copies_the_data() {
    let (dir, server) = written_raid5("block-status-copy");
    let uri = server.uri("vol0");
    let out = dir.path().join("copy.img");
    std::fs::File::create(&out)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();

    let control = dir.path().join("control.sock");
    let read_before = volume_status(&control, "vol0")["io"]["read_bytes"]
        .as_u64()
        .unwrap();

    run_ok(Command::new("nbdcopy").args([&uri, out.to_str().unwrap()]));

    // It asked for the data extents only: two regions of 128 MiB.
    let read = volume_status(&control, "vol0")["io"]["read_bytes"]
        .as_u64()
        .unwrap()
        - read_before;
    assert!(
        read <= 2 * 128 * MIB,
        "nbdcopy read {read} bytes, holes included"
    );
    assert!(read >= MIB, "nbdcopy read {read} bytes");
    let meta = std::fs::metadata(&out).unwrap();
    let allocated = meta.blocks() * 512;
    assert!(
        allocated <= 2 * 128 * MIB,
        "nbdcopy wrote {allocated} bytes: it did not skip the holes"
    );
    let mut f = std::fs::File::open(&out).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(130 * MIB)).unwrap();
    f.read_exact(&mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0xab), "the written MiB was copied");
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(700 * MIB)).unwrap();
    f.read_exact(&mut buf[..4096]).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 0xcd));
}

/// Sends one option; returns the reply types until the final one.
fn option(s: &mut TcpStream, code: u32, payload: &[u8]) -> Vec<u32> {
    let mut b = 0x4948_4156_454f_5054u64.to_be_bytes().to_vec();
    b.extend_from_slice(&code.to_be_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    s.write_all(&b).unwrap();
    let mut kinds = Vec::new();
    loop {
        let mut head = [0u8; 20];
        s.read_exact(&mut head).unwrap();
        let kind = u32::from_be_bytes(head[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(head[16..20].try_into().unwrap());
        let mut body = vec![0u8; len as usize];
        s.read_exact(&mut body).unwrap();
        kinds.push(kind);
        // NBD_REP_ACK (1) or an error (bit 31) ends the option.
        if kind == 1 || kind & (1 << 31) != 0 {
            return kinds;
        }
    }
}

fn meta(name: &[u8], count: u32, queries: &[&[u8]]) -> Vec<u8> {
    let mut p = (name.len() as u32).to_be_bytes().to_vec();
    p.extend_from_slice(name);
    p.extend_from_slice(&count.to_be_bytes());
    for q in queries {
        p.extend_from_slice(&(q.len() as u32).to_be_bytes());
        p.extend_from_slice(q);
    }
    p
}

#[test]
fn malformed_set_meta_context_gets_error_replies_and_the_server_goes_on() {
    let (_dir, server) = written_raid5("block-status-bad");
    let mut s = TcpStream::connect(server.addr).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    const SET: u32 = 10;
    const ERR_INVALID: u32 = (1 << 31) | 3;
    const ERR_UNKNOWN: u32 = (1 << 31) | 6;
    const ERR_TOO_BIG: u32 = (1 << 31) | 9;

    let before_structured = option(&mut s, SET, &meta(b"vol0", 1, &[b"base:allocation"]));
    assert_eq!(option(&mut s, 8, &[]), vec![1]);
    let mut past_end = meta(b"vol0", 1, &[]);
    past_end.extend_from_slice(&1000u32.to_be_bytes());
    let many: Vec<&[u8]> = vec![b"base:allocation"; 1000];
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("name past the end", vec![0, 0, 1, 0, b'v'], ERR_INVALID),
        ("query past the end", past_end, ERR_INVALID),
        (
            "count past the end",
            meta(b"vol0", 5, &[b"base:allocation"]),
            ERR_INVALID,
        ),
        ("too many queries", meta(b"vol0", 1000, &many), ERR_TOO_BIG),
        (
            "no namespace",
            meta(b"vol0", 1, &[b"allocation"]),
            ERR_INVALID,
        ),
        (
            "unknown export",
            meta(b"nope", 1, &[b"base:allocation"]),
            ERR_UNKNOWN,
        ),
        ("not UTF-8", meta(b"vol0", 1, &[b"base:\xff"]), ERR_INVALID),
    ];
    let got: Vec<(&str, Vec<u32>)> = cases
        .iter()
        .map(|(what, p, _)| (*what, option(&mut s, SET, p)))
        .collect();
    let unknown_namespace = option(&mut s, SET, &meta(b"vol0", 1, &[b"x-nobody:thing"]));
    let good = option(&mut s, SET, &meta(b"vol0", 1, &[b"base:allocation"]));

    assert_eq!(before_structured, vec![ERR_INVALID]);
    for ((what, replies), (_, _, want)) in got.iter().zip(&cases) {
        assert_eq!(replies, &vec![*want], "{what}");
    }
    assert_eq!(unknown_namespace, vec![1], "unknown namespaces are ignored");
    assert_eq!(good, vec![4, 1], "META_CONTEXT then ACK");
    let map = nbdinfo_map(&server.uri("vol0"));
    assert_eq!(map[0], (0, 128 * MIB, 3), "the server still serves");
}
