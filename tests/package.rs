//! The host install: `contrib/syncast.service` (the systemd unit), `contrib/syncast.default`
//! (`/etc/default/syncast`) and the Debian package `make deb` builds from them.
//!
//! - Every `cargo test`: `systemd-analyze verify` has nothing to say about the unit, the unit
//!   has the settings docs/operations.md promises, and every `SYNCAST_ARGS` line of the
//!   defaults file, live or commented, starts the server.
//! - Root on Debian (`#[ignore]`d; `make package` runs it as root, after `make deb`, with the
//!   package's path in `SYNCAST_DEB`): the package is installed into this machine with `dpkg -i`,
//!   the installed `/usr/bin/syncast` is run as the unit would run it (no init system needed),
//!   serves `/healthz` and stores in `/var/lib/syncast`, and after `dpkg -r` and `dpkg --purge`
//!   nothing named syncast is left. It refuses to touch a machine that already has syncast.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::root::{self, run_bounded};
use common::{listen_addr, raw_get, syncast_bin, wait_for, KillOnDrop};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The values of `key` in a systemd `EnvironmentFile`: the live one (the last assignment, quotes
/// removed), and each commented-out `# KEY=...` example.
fn env_values(text: &str, key: &str) -> (Option<String>, Vec<String>) {
    let value = |line: &str| {
        let v = line.strip_prefix(key)?.strip_prefix('=')?.trim();
        Some(v.trim_matches('"').to_string())
    };
    let mut live = None;
    let mut examples = Vec::new();
    for line in text.lines().map(str::trim) {
        match line.strip_prefix('#') {
            Some(comment) => examples.extend(value(comment.trim())),
            None => live = value(line).or(live),
        }
    }
    (live, examples)
}

/// The `ExecStart=` words of a unit with `$SYNCAST_ARGS` split at white space, as systemd does.
fn exec_start(unit: &str, args: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart= line");
    line.split_whitespace()
        .flat_map(|w| match w {
            "$SYNCAST_ARGS" => args.split_whitespace().map(str::to_string).collect(),
            w => vec![w.to_string()],
        })
        .collect()
}

/// `systemd-analyze verify unit`: `Err` with its output if it fails or says anything about the
/// unit (it warns, exit status 0, about unknown keys and bad values).
fn verify(unit: &Path) -> Result<String, String> {
    let out = run_bounded(
        "systemd-analyze",
        &["verify", unit.to_str().unwrap()],
        Duration::from_secs(60),
    )
    .map_err(|e| format!("{e} (Debian: apt-get install systemd; make test-deps says so)"))?;
    let about_it: Vec<&str> = out.text.lines().filter(|l| l.contains("syncast")).collect();
    if out.code != Some(0) || !about_it.is_empty() {
        return Err(format!(
            "systemd-analyze verify {}: exit {:?}\n{}",
            unit.display(),
            out.code,
            out.text
        ));
    }
    Ok(out.text)
}

#[test]
fn the_unit_passes_systemd_analyze_verify_with_the_promised_settings() {
    let unit = read(&repo("contrib/syncast.service"));
    for setting in [
        "Type=exec",
        "EnvironmentFile=-/etc/default/syncast",
        "ExecStart=/usr/bin/syncast --db /var/lib/syncast/syncast.db $SYNCAST_ARGS",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "DynamicUser=yes",
        "StateDirectory=syncast",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "LimitNOFILE=65536",
        "TasksMax=infinity",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "WantedBy=multi-user.target",
    ] {
        assert!(
            unit.lines().any(|l| l == setting),
            "contrib/syncast.service lacks {setting}"
        );
    }
    // verify checks that ExecStart's program exists: this build's binary stands in for
    // /usr/bin/syncast (the package test verifies the installed unit as it is).
    let dir = std::env::temp_dir().join(common::unique("syncast-unit-"));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("syncast.service");
    let bin = env!("CARGO_BIN_EXE_syncast");
    let text: String = unit
        .lines()
        .map(|l| match l.strip_prefix("ExecStart=/usr/bin/syncast ") {
            Some(rest) => format!("ExecStart={bin} {rest}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&copy, text).unwrap();
    let result = verify(&copy);
    let _ = std::fs::remove_dir_all(&dir);
    result.unwrap();
}

#[test]
fn every_syncast_args_of_the_defaults_file_starts_the_server() {
    let (live, examples) = env_values(&read(&repo("contrib/syncast.default")), "SYNCAST_ARGS");
    let live = live.expect("a live SYNCAST_ARGS line");
    assert_eq!(live, "--listen 127.0.0.1:8080");
    assert!(examples.len() >= 3, "{examples:?}");
    for args in std::iter::once(&live).chain(&examples) {
        let run = common::RunDir::new("syncast-defaults-");
        // The example's log file and key go to the run's folder (the key is one `openssl` makes
        // for the tests); the port is any free one.
        let args = args
            .replace("/var/log/syncast/", &format!("{}/", run.dir.display()))
            .replace("/etc/syncast/", &format!("{}/", run.dir.display()));
        std::fs::copy(&common::auth::ec().public_file, run.dir.join("jwt.pub")).unwrap();
        let mut cmd = syncast_bin();
        cmd.arg("--db")
            .arg(run.dir.join("a.db"))
            .args(args.split_whitespace())
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = KillOnDrop(cmd.spawn().unwrap());
        let addr = listen_addr(&mut child.0);
        let reply = raw_get(addr, "/healthz", common::PATIENCE).unwrap_or_default();
        assert!(reply.starts_with("HTTP/1.1 200"), "{args}: {reply}");
        common::sigterm(&child.0);
        let exit = wait_for("exit", || child.0.try_wait().unwrap());
        assert_eq!(exit.code(), Some(0), "{args}");
        let _ = std::fs::remove_dir_all(&run.dir);
    }
}

/// `dpkg ARGS` (bounded), retried while another dpkg holds its lock; `Err` on failure.
fn dpkg(args: &[&str]) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = run_bounded("dpkg", args, Duration::from_secs(120))?;
        eprintln!("$ dpkg {}\n{}", args.join(" "), out.text.trim_end());
        if out.code == Some(0) {
            return Ok(out.text);
        }
        if !out.text.contains("lock") || Instant::now() > deadline {
            return Err(format!(
                "dpkg {}: exit {:?}\n{}",
                args.join(" "),
                out.code,
                out.text
            ));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `dpkg-query`'s `${db:Status-Status}` of syncast: `not-installed` if dpkg does not know it.
fn try_package_status() -> Result<String, String> {
    let out = run_bounded(
        "dpkg-query",
        &["-W", "-f=${db:Status-Status}", "syncast"],
        Duration::from_secs(30),
    )?;
    Ok(match out.code {
        Some(0) => out.text.trim().to_string(),
        _ => "not-installed".to_string(),
    })
}

fn package_status() -> String {
    try_package_status().unwrap()
}

const STORE: &str = "/var/lib/syncast";

/// Every path under these folders whose name has "syncast" in it: what the package, its
/// maintainer scripts (deb-systemd-helper's links and state), dpkg's own records and this test
/// may create. Other changes to the machine meanwhile (other work on it) do not count; nor does
/// /run, where other tests make network namespaces named syncast-….
fn syncast_paths() -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .contains("syncast")
            {
                found.push(path.clone());
            }
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && depth > 0 {
                walk(&path, depth - 1, found);
            }
        }
    }
    let mut found = Vec::new();
    for (dir, depth) in [
        ("/etc", 8),
        ("/usr/bin", 0),
        ("/usr/sbin", 0),
        ("/usr/lib/systemd", 3),
        ("/usr/share/doc", 0),
        ("/var/lib", 4),
        ("/var/log", 1),
    ] {
        walk(Path::new(dir), depth, &mut found);
    }
    found.sort();
    found
}

/// Why this machine cannot take the test, if it cannot; else the package.
fn preconditions() -> Result<PathBuf, String> {
    root::need_root()?;
    let deb = std::env::var_os("SYNCAST_DEB")
        .map(PathBuf::from)
        .ok_or("SYNCAST_DEB is not set: `make package` builds the .deb and sets it")?;
    if !deb.is_file() {
        return Err(format!("SYNCAST_DEB={}: no such file", deb.display()));
    }
    run_bounded("dpkg", &["--version"], Duration::from_secs(30))
        .map_err(|e| format!("{e}: not a Debian system?"))?;
    let status = try_package_status()?;
    if status != "not-installed" {
        return Err(format!(
            "dpkg has syncast as {status:?}: this test installs and purges its own package, \
             so it leaves a machine with syncast alone"
        ));
    }
    let left = syncast_paths();
    if !left.is_empty() {
        return Err(format!(
            "these exist already and the test would replace or remove them: {left:?}"
        ));
    }
    Ok(deb)
}

/// Purges the package (if dpkg still has it) and removes the store on drop, so a failed test
/// leaves the machine as it found it too.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if try_package_status().is_ok_and(|s| s != "not-installed") {
            if let Err(e) = dpkg(&["--purge", "syncast"]) {
                eprintln!("cleanup: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(STORE);
    }
}

#[test]
#[ignore = "needs root on Debian: installs the .deb with dpkg; `make package` runs it as root"]
fn the_deb_installs_serves_healthz_as_the_unit_would_and_purges_clean() {
    let test = "the_deb_installs_serves_healthz_as_the_unit_would_and_purges_clean";
    let deb = preconditions().unwrap_or_else(|why| root::cannot_run(test, &why));
    let installed = Installed;
    let started = Instant::now();

    // 1. Installed: the binary, the unit and the defaults, byte for byte what the repo has.
    dpkg(&["-i", deb.to_str().unwrap()]).unwrap();
    assert_eq!(package_status(), "installed");
    let files = dpkg(&["-L", "syncast"]).unwrap();
    let unit_path = files
        .lines()
        .find(|l| l.ends_with("/systemd/system/syncast.service"))
        .expect("the unit in the package")
        .to_string();
    let unit = read(Path::new(&unit_path));
    assert_eq!(unit, read(&repo("contrib/syncast.service")));
    let defaults = read(Path::new("/etc/default/syncast"));
    assert_eq!(defaults, read(&repo("contrib/syncast.default")));
    let conffiles = run_bounded(
        "dpkg-query",
        &["-W", "-f=${Conffiles}", "syncast"],
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(
        conffiles.text.contains("/etc/default/syncast"),
        "{}",
        conffiles.text
    );
    let version = run_bounded("/usr/bin/syncast", &["--version"], Duration::from_secs(30)).unwrap();
    assert_eq!(
        version.text.trim(),
        format!("syncast {}", env!("CARGO_PKG_VERSION"))
    );
    // The installed unit as it is: its ExecStart now exists.
    let said = verify(Path::new(&unit_path)).unwrap();
    eprintln!("systemd-analyze verify {unit_path}: nothing about the unit\n{said}");

    // 2. Run as the unit would: ExecStart with SYNCAST_ARGS from /etc/default/syncast, as a user
    // of its own (DynamicUser) that owns only the state directory (StateDirectory), from /, log
    // lines on standard error (the journal). The default port, if something here has it, is
    // swapped for a free one.
    let (args, _) = env_values(&defaults, "SYNCAST_ARGS");
    let mut argv = exec_start(&unit, &args.unwrap_or_default());
    assert_eq!(
        argv[..3],
        ["/usr/bin/syncast", "--db", "/var/lib/syncast/syncast.db"]
    );
    let default_addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    if TcpListener::bind(default_addr).is_err() {
        eprintln!("{default_addr} is busy here: the run listens on a free port instead");
        argv.extend(["--listen".to_string(), "127.0.0.1:0".to_string()]);
    }
    let uid = root::unused_uid(61184).unwrap();
    std::fs::create_dir(STORE).unwrap();
    root::chown_tree(Path::new(STORE), uid).unwrap();
    let journal = common::RunDir::new("syncast-deb-");
    let stderr = std::fs::File::create(&journal.log).unwrap();
    eprintln!("running as uid {uid}: {}", argv.join(" "));
    let mut cmd = Command::new(&argv[0]);
    {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(uid);
    }
    cmd.args(&argv[1..])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    let addr = listen_addr(&mut child.0);
    let health = raw_get(addr, "/healthz", common::PATIENCE).unwrap_or_default();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    eprintln!(
        "GET http://{addr}/healthz: {}",
        health.lines().last().unwrap_or("")
    );
    let alarm = raw_get(addr, "/alarms/deb-test", common::PATIENCE).unwrap_or_default();
    assert!(
        alarm.ends_with(r#"{"alarm":false,"id":"deb-test"}"#),
        "{alarm}"
    );
    let store = Path::new(STORE).join("syncast.db");
    let owner = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&store)
            .unwrap_or_else(|e| panic!("{}: {e}", store.display()))
            .uid()
    };
    assert_eq!(owner, uid, "the store belongs to the service's user");
    common::sigterm(&child.0);
    let exit = wait_for("exit", || child.0.try_wait().unwrap());
    assert_eq!(exit.code(), Some(0));
    drop(child);
    let log = journal.log_text();
    assert!(log.contains("server listening addr="), "{log}");
    assert!(log.contains("shutdown complete"), "{log}");
    eprintln!("its log (standard error):\n{}", log.trim_end());

    // 3. Removed: the program goes, the conffile stays until the purge; purged: nothing named
    // syncast is left (the store, which systemd would have made and a purge keeps, is this
    // test's own and goes too).
    dpkg(&["-r", "syncast"]).unwrap();
    assert!(!Path::new("/usr/bin/syncast").exists());
    assert!(Path::new("/etc/default/syncast").exists());
    dpkg(&["--purge", "syncast"]).unwrap();
    assert_eq!(package_status(), "not-installed");
    std::fs::remove_dir_all(STORE).unwrap();
    drop(installed);
    let left = syncast_paths();
    assert!(left.is_empty(), "left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&journal.dir);
    eprintln!("installed, ran, purged in {:?}", started.elapsed());
}
