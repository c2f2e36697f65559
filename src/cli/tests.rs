//! Unit tests of `cli` (beside it, so the module itself stays short).

use super::*;

fn run(args: &[&str]) -> Result<Run, String> {
    match parse(args.iter().map(OsString::from))? {
        Command::Run(run) => Ok(*run),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_flag_sets_its_value_and_its_default_is_the_configs() {
    let r = run(&[
        "--listen=127.0.0.1:0",
        "--tick",
        "1s",
        "--max-clients",
        "7",
        "--rate",
        "2.5",
        "--cors-origin",
        "*",
        "--log-level",
        "debug",
        "--log-file",
        "x.log",
    ])
    .unwrap();
    assert_eq!(r.config.listen.port(), 0);
    assert_eq!(r.config.tick, Duration::from_secs(1));
    assert_eq!((r.config.max_clients, r.config.rate), (7, 2.5));
    assert_eq!(r.config.cors_origin.as_deref(), Some("*"));
    assert_eq!(r.log_level, LevelFilter::Debug);
    assert_eq!(r.log_file.as_deref(), Some("x.log"));
    // A default shown by --help parses back to the default itself.
    let mut o = Options::default();
    for flag in FLAGS {
        if let Some(default) = flag.default_text().filter(|d| d != "off") {
            let typed = format!("--{}", flag.name);
            (flag.set)(&mut o, &typed, default.into()).unwrap();
        }
    }
    let d = Config::default();
    assert_eq!(format!("{:?}", o.config), format!("{d:?}"));
    let names: Vec<&str> = FLAGS.iter().map(|f| f.name).collect();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "each flag once");
}

#[test]
fn the_auth_flags_set_their_values_and_a_bare_admin_port_is_loopback() {
    let r = run(&[
        "--listen",
        "0.0.0.0:0",
        "--insecure",
        "--admin-listen",
        "9191",
        "--jwt-leeway",
        "30s",
    ])
    .unwrap();
    assert!(r.config.insecure);
    assert_eq!(
        r.config.admin_listen,
        Some("127.0.0.1:9191".parse().unwrap())
    );
    assert_eq!(r.config.jwt_leeway, Duration::from_secs(30));
    let r = run(&[
        "--jwt-secret-file",
        "/s",
        "--jwt-public-key-file",
        "/p.pem",
        "--jwt-audience",
        "a",
        "--jwt-issuer",
        "i",
        "--admin-listen",
        "[::1]:9",
    ])
    .unwrap();
    assert_eq!(r.config.jwt_secret_file.as_deref(), Some("/s".as_ref()));
    assert_eq!(
        r.config.jwt_public_key_file.as_deref(),
        Some("/p.pem".as_ref())
    );
    assert_eq!(
        (
            r.config.jwt_audience.as_deref(),
            r.config.jwt_issuer.as_deref()
        ),
        (Some("a"), Some("i"))
    );
    assert_eq!(r.config.admin_listen, Some("[::1]:9".parse().unwrap()));
    // A non-loopback --listen without a key: refused, saying how to fix it.
    let e = run(&["--listen", "0.0.0.0:8080"]).unwrap_err();
    assert!(
        e.contains("--jwt-secret-file") && e.contains("--insecure"),
        "{e}"
    );
}

#[test]
fn bad_flags_and_values_are_one_line_errors() {
    let err = |args: &[&str]| run(args).unwrap_err();
    assert_eq!(err(&["--nope"]), "invalid option '--nope'");
    assert_eq!(
        err(&["--tick", "fast"]),
        "--tick: invalid duration \"fast\" (use e.g. 500ms, 2s, 1m)"
    );
    assert_eq!(
        err(&["--max-clients", "0"]),
        "--max-clients must be 1..100000"
    );
    assert_eq!(
        err(&["--max-clients", "x"]),
        "--max-clients: invalid number \"x\""
    );
    assert_eq!(
        err(&["--listen", "nowhere"]),
        "--listen: invalid address \"nowhere\" (use IP:PORT)"
    );
    assert_eq!(
        err(&["--log-level", "loud"]),
        "--log-level: invalid level \"loud\""
    );
    assert!(err(&["--tick"]).contains("--tick"), "a missing value");
    assert_eq!(err(&["--insecure=yes"]), "--insecure takes no value");
    assert_eq!(
        err(&["--admin-listen", "x"]),
        "--admin-listen: invalid address \"x\" (use IP:PORT or PORT)"
    );
    assert_eq!(err(&["--jwt-audience", ""]), "--jwt-audience: empty");
    assert_eq!(
        err(&["--alarm-store", "redis"]),
        "--alarm-store redis must be given with --redis URL"
    );
    assert_eq!(
        err(&["--alarm-store", "mysql"]),
        "--alarm-store: invalid store \"mysql\" (use sqlite or redis)"
    );
    assert!(
        err(&["--redis", "http://x"]).starts_with("--redis must be redis://HOST"),
        "{}",
        err(&["--redis", "http://x"])
    );
    let tls = run(&["--redis", "rediss://127.0.0.1:6380/0"]).err();
    if cfg!(feature = "redis-tls") {
        assert_eq!(tls, None, "a TLS build takes rediss://");
    } else {
        let tls = tls.unwrap_or_default();
        assert!(tls.contains("rediss:// (TLS) needs a build with"), "{tls}");
    }
    assert_eq!(
        err(&["--redis", "redis://x", "--redis-timeout", "5m"]),
        "--redis-timeout must be 10ms..60s"
    );
    assert!(err(&["--redis-prefix", "a b"]).starts_with("--redis-prefix must be"));
    let r = run(&[
        "--redis",
        "redis://127.0.0.1:6390/3",
        "--alarm-store",
        "redis",
        "--redis-prefix",
        "t1:",
    ])
    .unwrap();
    assert_eq!(r.config.redis.as_deref(), Some("redis://127.0.0.1:6390/3"));
    assert_eq!(r.config.alarm_store, crate::config::AlarmStoreKind::Redis);
    assert_eq!(r.config.redis_prefix, "t1:");
    assert!(matches!(parse(["-h".into()]), Ok(Command::Help)));
    assert!(matches!(parse(["--version".into()]), Ok(Command::Version)));
}

#[test]
fn help_lists_every_flag_with_its_default() {
    let h = help();
    for flag in FLAGS {
        assert!(
            h.contains(format!("--{} {}", flag.name, flag.value).trim_end()),
            "{}",
            flag.name
        );
    }
    assert!(h.contains("  --insecure  "), "a switch shows no value");
    assert!(h.contains("--tick DUR"));
    assert!(h.contains("[default: 500ms]"));
    assert!(h.contains("[default: 127.0.0.1:8080]"));
    assert!(h.contains("[default: off]"));
    assert!(h.contains("-V, --version"));
}
