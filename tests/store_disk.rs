//! The store on a disk that fills up or turns read-only: a `PUT` answers 503 with the reason,
//! `/healthz` reports the store degraded, streams go on with the values they have, and freeing
//! the disk (or making it writable again) clears it without any request doing so.
//!
//! The store lives on a tmpfs of 2 MiB this test mounts (a real filesystem with a real size
//! limit: SQLite gets `ENOSPC` and `EROFS` from the kernel). Read-only: `mount -o remount,ro` of
//! that filesystem fails with `EBUSY` while the server holds the store open for writing (the
//! kernel refuses to make a filesystem read-only under a file open for writing; measured), so
//! the test stacks a read-only bind mount of the same filesystem on the store's folder. Every
//! file opened from then on (each `PUT` opens its own connection) is on a read-only mount,
//! `EROFS` as on a disk remounted read-only; `umount` of that bind mount makes it writable again.
//!
//! Needs root (mounts): `#[ignore]`d, so `cargo test` lists it as ignored; `make test` runs it as
//! root, and run then without root it fails (`common::root`). The mounts and the folder are
//! removed when it ends, also when it fails.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{root, run_cmd, start, unique, wait_for, wait_log, TestServer};

/// A size-limited tmpfs mounted on a fresh folder (plus any read-only bind mounts stacked on
/// it); unmounted and removed on drop.
struct Tmpfs {
    dir: PathBuf,
    /// Read-only bind mounts stacked on `dir`, each unmounted on drop.
    stacked: usize,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        root::need_root()?;
        let dir = std::env::temp_dir().join(unique("syncast-disk-"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let d = dir.to_str().unwrap();
        run_cmd(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "syncast-test",
                d,
            ],
        )?;
        Ok(Tmpfs { dir, stacked: 0 })
    }

    /// Makes the folder read-only for every new open (see the module comment).
    fn read_only(&mut self) -> Result<(), String> {
        let d = self.dir.to_str().unwrap();
        run_cmd("mount", &["--bind", d, d])?;
        self.stacked += 1;
        run_cmd("mount", &["-o", "remount,bind,ro", d])
    }

    /// Takes the last read-only bind mount away: the folder is writable again.
    fn writable(&mut self) -> Result<(), String> {
        run_cmd("umount", &[self.dir.to_str().unwrap()])?;
        self.stacked -= 1;
        Ok(())
    }

    /// Fills the filesystem with `filler` until the kernel says `ENOSPC`.
    fn fill(&self) -> PathBuf {
        let filler = self.dir.join("filler");
        let mut f = std::fs::File::create(&filler).expect("filler");
        for chunk in [64 * 1024, 4096, 512] {
            let block = vec![0u8; chunk];
            while f.write_all(&block).and_then(|()| f.sync_data()).is_ok() {}
        }
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let d = self.dir.to_str().unwrap().to_string();
        for _ in 0..self.stacked + 1 {
            if let Err(e) = run_cmd("umount", &[&d]) {
                eprintln!("cleanup: {e}");
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `/healthz` now: (status code, reason if degraded).
fn health(s: &TestServer) -> (u16, Option<String>) {
    let r = s.request("GET", "/healthz", None);
    let reason = r.json()["reason"].as_str().map(str::to_string);
    (r.status, reason)
}

/// PUTs `true` to fresh ids until one is refused (a write may still fit in room SQLite's log
/// file already has); returns that reply's error text.
fn put_until_refused(s: &TestServer, prefix: &str) -> String {
    for i in 0..200 {
        let r = s.request("PUT", &format!("/alarms/{prefix}-{i}"), Some("true"));
        match r.status {
            204 => continue,
            503 => return r.error(),
            other => panic!("PUT: {other} {}", r.body),
        }
    }
    panic!("200 PUTs on a full or read-only disk all succeeded")
}

fn on_tmpfs(test: &str, dir: &Path) -> TestServer {
    let db = dir.join("alarms.db");
    let s = start(|c| {
        c.db = db;
        c.refresh = Duration::from_millis(50);
    });
    assert_eq!(health(&s).0, 200, "{test}: healthy at start");
    s
}

#[test]
#[ignore = "needs root: mounts a size-limited tmpfs; `make test` runs it as root"]
fn a_full_or_read_only_disk_refuses_puts_with_503_degrades_healthz_and_recovers() {
    let test = "a_full_or_read_only_disk_refuses_puts_with_503_degrades_healthz_and_recovers";
    let mut disk = match Tmpfs::mount("2m") {
        Ok(d) => d,
        Err(why) => root::cannot_run(test, &why),
    };
    let s = on_tmpfs(test, &disk.dir);
    let id = unique("disk");
    let mut sse = s.sse(&format!("/sse/call/{id}?mode=change"));
    assert_eq!(sse.next_data(), r#"{"alarm":false}"#);

    // 1. Full.
    let filler = disk.fill();
    let error = put_until_refused(&s, &unique("full"));
    eprintln!("full disk: PUT 503 {error:?}");
    assert!(error.contains("disk full"), "{error}");
    let (status, reason) = health(&s);
    assert_eq!(status, 503, "degraded while writes fail");
    let reason = reason.expect("a reason");
    assert!(reason.contains("disk full"), "{reason}");
    wait_log(&["store write failed", "disk full"]);
    let r = s.request("PUT", &format!("/alarms/{id}"), Some("true"));
    assert_eq!(r.status, 503, "{}", r.body);
    // Reads still work, and the value that failed to be written is nowhere.
    assert_eq!(s.json(&format!("/alarms/{id}"))["alarm"], false);
    // Freed: the server finds out by itself (no request needed).
    std::fs::remove_file(&filler).unwrap();
    wait_for("healthy again after the disk was freed", || {
        (health(&s).0 == 200).then_some(())
    });
    wait_log(&["store writable again"]);
    assert_eq!(
        s.request("PUT", &format!("/alarms/{id}"), Some("true"))
            .status,
        204
    );
    assert_eq!(sse.next_data(), r#"{"alarm":true}"#);

    // 2. Read-only.
    disk.read_only().unwrap_or_else(|e| panic!("{test}: {e}"));
    let error = put_until_refused(&s, &unique("ro"));
    eprintln!("read-only: PUT 503 {error:?}");
    assert!(error.contains("read-only"), "{error}");
    let (status, reason) = health(&s);
    assert_eq!(status, 503);
    assert!(reason.expect("a reason").contains("read-only"));
    let r = s.request("DELETE", &format!("/alarms/{id}"), None);
    assert_eq!(r.status, 503, "{}", r.body);
    // The stream keeps its value meanwhile, and the refresher goes on reading.
    assert_eq!(s.json(&format!("/alarms/{id}"))["alarm"], true);
    disk.writable().unwrap_or_else(|e| panic!("{test}: {e}"));
    wait_for("healthy again once writable", || {
        (health(&s).0 == 200).then_some(())
    });
    assert_eq!(
        s.request("DELETE", &format!("/alarms/{id}"), None).status,
        204
    );
    assert_eq!(sse.next_data(), r#"{"alarm":false}"#);
    drop(sse);
    drop(s);
    drop(disk);
}
