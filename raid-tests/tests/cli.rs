//! The command line: create, examine, serve's demo and config handling, and
//! that every user mistake is one clear line with a non-zero exit.

use std::process::Output;

use raid_tests::*;

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A user error: non-zero exit, no panic/backtrace, a short message.
fn assert_user_error(out: &Output, needle: &str) {
    let err = stderr_of(out);
    assert!(
        !out.status.success(),
        "expected failure, got success: {err}"
    );
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    let lines = err.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(lines <= 3, "not a short error: {err}");
}

#[test]
fn create_then_examine_json_has_every_field() {
    // Arrange
    let dir = scratch_dir("examine");
    let paths = member_paths(dir.path(), 3);

    // Act
    create_array(5, "128K", "64M", "data1", &paths);
    let sb = examine(&paths[2]);

    // Assert
    assert_eq!(sb["name"], "data1");
    assert_eq!(sb["level"], 5);
    assert_eq!(sb["chunk_size"], 128 * 1024);
    assert_eq!(sb["member_count"], 3);
    assert_eq!(sb["role"], 2);
    let off = sb["data_offset"].as_u64().unwrap();
    assert!(off > 0 && off.is_multiple_of(1 << 20), "data offset {off}");
    let size = sb["data_size"].as_u64().unwrap();
    assert!(size > 0 && off + size <= 64 << 20 && size.is_multiple_of(128 << 10));
    assert!(sb["events"].as_u64().is_some());
    assert_eq!(sb["state"], "clean");
    assert_eq!(sb["array_uuid"], examine(&paths[0])["array_uuid"]);
    assert_eq!(std::fs::metadata(&paths[0]).unwrap().len(), 64 << 20);
    let text = run_ok(vraid(&["examine"]).arg(&paths[0]));
    assert!(text.contains("data1") && text.contains("raid5"), "{text}");
}

#[test]
fn create_refuses_existing_member_unless_forced() {
    // Arrange
    let dir = scratch_dir("force");
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "16M", "a", &paths);
    let uuid = examine(&paths[0])["array_uuid"].clone();

    // Act
    let refused = run(vraid(&["create", "--level", "0", "--name", "b"]).args(&paths));
    let uuid_after_refusal = examine(&paths[0])["array_uuid"].clone();
    let forced = run(vraid(&["create", "--level", "0", "--name", "b", "--force"]).args(&paths));

    // Assert
    assert_user_error(&refused, "--force");
    assert_eq!(uuid_after_refusal, uuid, "refused create changed nothing");
    assert!(forced.status.success(), "{}", stderr_of(&forced));
    assert_eq!(examine(&paths[0])["name"], "b");
}

#[test]
fn user_mistakes_are_one_clear_line() {
    let dir = scratch_dir("mistakes");
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, vec![0x5au8; 1 << 20]).unwrap();
    let p = member_paths(dir.path(), 3);
    let d = dir.path().to_str().unwrap();

    assert_user_error(&run(vraid(&["examine"]).arg(&junk)), "junk.img");
    let files_before = std::fs::read_dir(dir.path()).unwrap().count();
    assert_user_error(
        &run(&mut vraid(&["examine", "/nonexistent/x.img"])),
        "x.img",
    );
    assert_user_error(&run(vraid(&["create", "--level", "5"]).args(&p[..2])), "3");
    assert_user_error(
        &run(vraid(&["create", "--level", "0", "--chunk-size", "3K"]).args(&p[..2])),
        "chunk",
    );
    assert_user_error(
        &run(vraid(&["create", "--level", "0", "--member-size", "1K"]).args(&p[..2])),
        "small",
    );
    assert_user_error(
        &run(&mut vraid(&["create", "--level", "9", "a", "b"])),
        "level",
    );
    let files_after = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(
        files_before, files_after,
        "failed creates leave no files behind"
    );
    assert_user_error(&run(&mut vraid(&["frobnicate"])), "frobnicate");
    assert_user_error(
        &run(vraid(&["serve", "--config", &format!("{d}/missing.toml")])),
        "missing.toml",
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[volume]]\nname = \"v\"\nlevel = 5\nmembers = [\"a\", \"b\", \"c\"]\nbogus_key = 1\n",
    )
    .unwrap();
    assert_user_error(&run(vraid(&["serve", "--config"]).arg(&bad)), "bogus_key");
    assert_user_error(
        &run(vraid(&["serve", "--nbd", "127.0.0.1:1"]).arg(&junk)),
        "junk.img",
    );
}

#[test]
fn serve_without_arguments_runs_the_raid5_demo() {
    // Arrange
    let dir = scratch_dir("demo");

    // Act
    let server = Server::start_in(dir.path(), &[]);
    // The client commands are printed after the port opens: wait for them.
    let log = server.wait_log("qemu-img convert", std::time::Duration::from_secs(30));
    qemu_io(
        &server.uri("vol0"),
        &["write -P 0x42 0 1M".into(), "read -P 0x42 0 1M".into()],
    );
    let code = server.stop();

    // Assert
    assert_eq!(code, 0);
    assert!(log.contains(&format!("nbd://{}", "127.0.0.1")), "{log}");
    assert!(
        log.contains("qemu-img") || log.contains("nbdinfo"),
        "prints client commands: {log}"
    );
    let members = member_paths(&dir.path().join("vraid-data"), 4);
    for m in &members {
        assert_eq!(std::fs::metadata(m).unwrap().len(), 256 << 20);
    }
    let sb = examine(&members[0]);
    assert_eq!(sb["level"], 5);
    assert_eq!(sb["name"], "vol0");
    assert_eq!(sb["state"], "clean", "SIGTERM marks superblocks clean");
    // A second start reuses the same array.
    let server = Server::start_in(dir.path(), &[]);
    qemu_io(&server.uri("vol0"), &["read -P 0x42 0 1M".into()]);
    assert_eq!(server.stop(), 0);
}

#[test]
fn serve_config_exports_every_volume() {
    // Arrange
    let dir = scratch_dir("config");
    let d = dir.path().display();
    let cfg = dir.path().join("vraid.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[[volume]]
name = "fast"
level = 0
chunk_size = "64K"
members = ["{d}/a0.img", "{d}/a1.img"]
create = {{ member_size = "32M" }}

[[volume]]
name = "safe"
level = 1
members = ["{d}/b0.img", "{d}/b1.img"]
create = {{ member_size = "32M" }}
"#
        ),
    )
    .unwrap();

    // Act
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    qemu_io(&server.uri("fast"), &["write -P 0x01 0 2M".into()]);
    qemu_io(&server.uri("safe"), &["write -P 0x02 0 2M".into()]);

    // Assert: the volumes are isolated from each other.
    qemu_io(&server.uri("fast"), &["read -P 0x01 0 2M".into()]);
    qemu_io(&server.uri("safe"), &["read -P 0x02 0 2M".into()]);
    assert_eq!(server.stop(), 0);
    assert_eq!(examine(&dir.path().join("b1.img"))["name"], "safe");
}
