//! Red team of the pool volumes' vhost-user-blk exports and `[[pool]]`
//! config (issue 11): two volumes claiming one socket path, a socket path
//! that is a regular file (it used to be deleted and replaced), a
//! frontend that connects and never speaks, a guest that submits and
//! never reaps its completions, and config typos, each refused with a
//! clear message and nothing else touched.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use raid_tests::*;

fn serve_pool(dir: &Path) -> (Server, PathBuf) {
    let paths = member_paths(dir, 3);
    create_array(5, "64K", "32M", "vol0", &paths);
    let control = dir.join("control.sock");
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--control", control.to_str().unwrap()]);
    let server = Server::start(&args);
    vraid_ctl_ok(
        &control,
        &["pool", "create", "vol0", "--cluster-size", "64K"],
    );
    (server, control)
}

fn create_on(control: &Path, name: &str, socket: &Path) -> std::process::Output {
    vraid_ctl(
        control,
        &[
            "volume",
            "create",
            "vol0",
            name,
            "--size",
            "8M",
            "--vhost-socket",
            socket.to_str().unwrap(),
        ],
    )
}

fn volume_names(control: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&vraid_ctl_ok(control, &["volume", "list", "--json"])).unwrap();
    v[0]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn two_volumes_cannot_claim_one_vhost_socket() {
    // Arrange
    let dir = scratch_dir("rt-pool-sock-twice");
    let (server, control) = serve_pool(dir.path());
    let sock = dir.path().join("a.sock");
    let first = create_on(&control, "a", &sock);
    wait_for_socket(&sock);

    // Act: the same path, and another spelling of it.
    let same = create_on(&control, "b", &sock);
    let spelled = create_on(&control, "c", &dir.path().join(".").join("a.sock"));

    // Assert
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    for (out, what) in [(&same, "same path"), (&spelled, "other spelling")] {
        assert!(
            !out.status.success(),
            "{what}: a second volume took a's socket"
        );
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(
            e.contains("already the socket of volume \"a\"") || e.contains("in use"),
            "{what}: {e}"
        );
    }
    assert_eq!(volume_names(&control), vec!["a".to_string()]);
    // a's socket still serves a.
    let size = run_ok(Command::new("nbdinfo").args(["--size", &server.uri("a")]));
    assert_eq!(size.trim(), (8u64 << 20).to_string());
    assert!(std::os::unix::net::UnixStream::connect(&sock).is_ok());
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_socket_path_that_is_a_regular_file_is_refused_and_the_file_kept() {
    // Arrange
    let dir = scratch_dir("rt-pool-sock-file");
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, b"keep me").unwrap();

    // Act: at run time on a pool volume, at start-up on an array (this
    // used to delete the file and bind over it), and in a config.
    let (server, control) = serve_pool(dir.path());
    let runtime = create_on(&control, "a", &file);
    let names = volume_names(&control);
    assert_eq!(server.stop(), 0);
    let members = member_paths(dir.path(), 3);
    let mut serve = vraid(&["serve", "--nbd", "127.0.0.1:0", "--vhost-user-blk"]);
    serve.arg(&file).args(&members);
    let array = run(serve);
    let config = dir.path().join("vraid.toml");
    let list: Vec<String> = members
        .iter()
        .map(|m| format!("\"{}\"", m.display()))
        .collect();
    std::fs::write(
        &config,
        format!(
            "[[volume]]\nname = \"vol0\"\nlevel = 5\nmembers = [{}]\n[[pool]]\narray = \"vol0\"\n\
             [[pool.volume]]\nname = \"g\"\nsize = \"4M\"\nvhost_user_blk = \"{}\"\n",
            list.join(", "),
            file.display()
        ),
    )
    .unwrap();
    let from_config = run(vraid(&[
        "serve",
        "--nbd",
        "127.0.0.1:0",
        "--config",
        config.to_str().unwrap(),
    ]));

    // Assert
    for (out, what) in [
        (&runtime, "volume create"),
        (&array, "array"),
        (&from_config, "config"),
    ] {
        assert!(
            !out.status.success(),
            "{what}: a regular file was taken as a socket"
        );
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains("is not a socket"), "{what}: {e}");
    }
    assert!(names.is_empty(), "a volume was left behind: {names:?}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[test]
fn a_frontend_that_never_speaks_holds_up_neither_delete_nor_shutdown() {
    // Arrange: a connection to a's socket that sends nothing and reads
    // nothing, and one that sent half a message.
    let dir = scratch_dir("rt-pool-silent");
    let (server, control) = serve_pool(dir.path());
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    assert!(create_on(&control, "a", &a).status.success());
    assert!(create_on(&control, "b", &b).status.success());
    wait_for_socket(&a);
    let silent = std::os::unix::net::UnixStream::connect(&a).unwrap();
    let mut half = std::os::unix::net::UnixStream::connect(&b).unwrap();
    half.write_all(&[1, 0, 0, 0]).unwrap();

    // Act
    let mut delete = vraid(&[
        "volume",
        "delete",
        "a",
        "--control",
        control.to_str().unwrap(),
    ]);
    let mut child = delete.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("volume delete hung on a silent frontend");
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    // Assert
    assert!(status.success());
    assert_eq!(volume_names(&control), vec!["b".to_string()]);
    qemu_io(
        &server.uri("b"),
        &["write -P 5 0 4k".into(), "read -P 5 0 4k".into()],
    );
    // SIGTERM with the half-spoken frontend still connected: a clean stop
    // within Server::stop's 30 s.
    assert_eq!(server.stop(), 0);
    drop((silent, half));
}

#[test]
fn a_guest_that_never_reaps_its_completions_holds_up_neither_delete_nor_shutdown() {
    use blkio::{Blkio, ReqFlags};
    // Arrange: 32 writes submitted, their completions never read.
    let dir = scratch_dir("rt-pool-noreap");
    let (server, control) = serve_pool(dir.path());
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    assert!(create_on(&control, "a", &a).status.success());
    assert!(create_on(&control, "b", &b).status.success());
    wait_for_socket(&a);
    let mut blkio = Blkio::new("virtio-blk-vhost-user").unwrap();
    blkio.set_str("path", a.to_str().unwrap()).unwrap();
    blkio.connect().unwrap();
    blkio.set_i32("num-queues", 1).unwrap();
    let mut outcome = blkio.start().unwrap();
    let region = blkio.alloc_mem_region(1 << 20).unwrap();
    blkio.map_mem_region(&region).unwrap();
    let q = &mut outcome.queues[0];
    for i in 0..32u64 {
        let ptr = (region.addr + (i as usize % 16) * 4096) as *const u8;
        q.write(i * 65536, ptr, 4096, i as usize, ReqFlags::empty());
    }
    let mut none: [std::mem::MaybeUninit<blkio::Completion>; 0] = [];
    q.do_io(&mut none, 0, None, None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_json(&control)["pool_volumes"][0]["io"]["writes"]
        .as_u64()
        .unwrap()
        < 32
    {
        assert!(Instant::now() < deadline, "the submitted writes never ran");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Act
    let deleted = vraid_ctl(&control, &["volume", "delete", "a"]);

    // Assert
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    qemu_io(
        &server.uri("b"),
        &["write -P 6 0 4k".into(), "read -P 6 0 4k".into()],
    );
    vraid_ctl_ok(&control, &["pool", "check", "vol0"]);
    assert_eq!(server.stop(), 0);
    drop(blkio);
}
